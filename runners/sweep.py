"""Command-line sweep syntax: `seed=0..4` (inclusive range), comma lists `seed=0,1,2`, and Hydra's own
`range()`, `glob()`, `choice()` start a multirun without `-m`; a plain value runs once.

    expand_argv(["method=lora", "seed=0..4"]) -> ["--multirun", "method=lora", "seed=range(0,5)"]
"""

from __future__ import annotations

import re

from hydra.core.override_parser.overrides_parser import OverridesParser

VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp", "--config-dir",
               "-cd", "--info", "-i", "--experimental-rerun"}  # Hydra flags whose value is the next argument
RANGE = re.compile(r"^(?P<key>[\w.+~/@-]+)=(?P<a>-?\d+)\.\.(?P<b>-?\d+)$")


def expand_argv(argv: list[str]) -> list[str]:
    """Rewrite `k=a..b` into Hydra's `k=range(a,b+1)` and add `--multirun` when any override sweeps."""
    out, sweep = [], False
    for arg in argv:
        m = RANGE.match(arg)
        if m:
            a, b = int(m["a"]), int(m["b"])
            if b < a:
                raise ValueError(f"'{arg}': empty range ({a}..{b}); write the smaller bound first, e.g. seed=0..4")
            arg = f"{m['key']}=range({a},{b + 1})"
        out.append(arg)
    flags, overrides = [], []
    for i, a in enumerate(out):
        is_value = i > 0 and out[i - 1] in VALUE_FLAGS  # e.g. the `job` of `--cfg job`
        (flags if a.startswith("-") or is_value else overrides).append(a)
    if overrides:
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        sweep = any(o.is_sweep_override() for o in parsed)
    if sweep and not ({"-m", "--multirun"} & set(flags)):
        out.insert(0, "--multirun")
    return out
