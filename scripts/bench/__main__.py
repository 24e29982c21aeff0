"""The benchmarks' entry point: parse `<mode> key=value ...`, run the mode's benchmark, render its record,
write it (JSON + markdown, and a figure where the mode has one) and print the markdown.

    python -m scripts.bench table4|tenants|stream|train|prefill key=value ...    # options: scripts/bench/options.py

A new benchmark: a module with run_<mode>(o) -> dict, its render (and plot) in render.py, its mode in
options.MODES and an entry in BENCHMARKS below.
"""

from __future__ import annotations

import os
import sys

import torch

from core.errors import exit_on_user_error
from scripts.bench import render
from scripts.bench.common import write
from scripts.bench.options import Options, device_and_dtype, parse, stem
from scripts.bench.prefill import run_prefill
from scripts.bench.stream import run_stream
from scripts.bench.table4 import run_table4
from scripts.bench.tenants import run_tenants
from scripts.bench.train import run_train

# mode -> (run: Options -> record, render: record -> markdown, plot: (record, path) -> path, or None)
BENCHMARKS = {
    "table4": (run_table4, render.render_table4, None),
    "tenants": (run_tenants, render.render_tenants, render.plot_tenants),
    "stream": (run_stream, render.render_stream, None),
    "train": (run_train, render.render_train, None),
    "prefill": (run_prefill, render.render_prefill, None),
}


def run(o: Options) -> tuple[dict, list[str]]:
    """Run one mode; returns (result, paths written)."""
    import transformers

    transformers.logging.set_verbosity_error()  # generation-config notes would repeat every call
    if o.threads is not None:
        torch.set_num_threads(o.threads)
    dev, _ = device_and_dtype(o)
    run_mode, render_mode, plot = BENCHMARKS[o.mode]
    res = run_mode(o)
    md = render_mode(res)
    paths = list(write(o, dev, res, md))
    if plot is not None:  # results/figures/bench_<stem>.png: bench_tenants.png, bench_tenants_tiny_quick.png
        paths.append(plot(res, os.path.join(o.figures, f"bench_{stem(o, dev)}.png")))
    print(md)
    return res, paths


def main(argv: list[str]) -> None:
    _, paths = run(parse(argv))
    print("\n".join(f"wrote {p}" for p in paths))


if __name__ == "__main__":
    exit_on_user_error(main, sys.argv[1:])
