"""Turn bad user input into one clear line on stderr and exit code 2, never a bare traceback."""

from __future__ import annotations

import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from core.registry import RegistryError

USER_ERRORS = (RegistryError, HydraException, OmegaConfBaseException, FileNotFoundError, ValueError)


class UserError(Exception):
    """A problem with what the user asked for (bad value, missing file, conflicting result)."""


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"error: {msg[0] if msg else type(e).__name__}" + (
        f" ({' '.join(m.strip() for m in msg[1:3])})" if len(msg) > 1 else ""
    )


def exit_on_user_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (UserError, *USER_ERRORS) as e:
        print(one_line(e), file=sys.stderr)
        raise SystemExit(2) from None
