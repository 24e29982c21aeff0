"""Turn bad user input into one clear line on stderr and exit code 2, never a bare traceback."""

from __future__ import annotations

import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from core.registry import RegistryError

USER_ERRORS = (RegistryError, HydraException, OmegaConfBaseException, FileNotFoundError, ValueError)


# Exit codes of run.py (README "Exit codes"): 0 done or skipped (finished, or another process runs it), 1 the run
# failed (a failed record names the error), 2 bad input or an unwritable file system (nothing written), 75 stopped
# by SIGTERM/SIGINT with a checkpoint (EX_TEMPFAIL: relaunch the same command to resume), 130 interrupted
# outside training (nothing finished-looking written).
EXIT_FAILED, EXIT_USAGE, EXIT_PREEMPTED, EXIT_INTERRUPTED = 1, 2, 75, 130


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
        raise SystemExit(EXIT_USAGE) from None
