"""Short real run of every registered method (or the ones named) and a table of dev loss at the first
and last evaluation: the "dev loss falls" check of the method issues.

    python -m scripts.smoke_methods backbone=smollm2-135m task=synth-compare methods=lora,iapt
    python -m scripts.smoke_methods                     # every method, SmolLM2, runner=debug, synth-compare

Runs go to a scratch results folder (not results/runs) with the debug runner shrunk further below.
"""

from __future__ import annotations

import sys
import tempfile
import time


def main(argv: list[str]) -> None:
    from core.config import compose, load_registries
    from pefts.registry import METHODS
    from runners.train import run

    opts = {"backbone": "smollm2-135m", "task": "synth-compare", "methods": ",".join(METHODS.names()),
            "steps": "12", "lr": "1e-3", "data_dir": None}
    extra = []
    for a in argv:
        k, sep, v = a.partition("=")
        if k in opts:
            opts[k] = v
        else:
            extra.append(a)
    load_registries()
    scratch = tempfile.mkdtemp(prefix="smoke-")
    print("| method | trainable | dev loss (step 0) | dev loss (last) | steps | wall s |")
    print("|---|---|---|---|---|---|")
    for name in opts["methods"].split(","):
        overrides = [f"backbone={opts['backbone']}", f"task={opts['task']}", f"method={name}", "runner=debug",
                     "logger=none", f"results_dir={scratch}", f"runner.max_steps={opts['steps']}",
                     f"runner.eval_steps={int(opts['steps']) // 2}", f"runner.lr={opts['lr']}",
                     "runner.patience=100", "runner.dev_generation=false", "runner.max_test_examples=4",
                     "runner.max_dev_examples=16", "runner.max_train_examples=64", *extra]
        if opts["data_dir"]:
            overrides.append(f"data_dir={opts['data_dir']}")
        cfg = compose(overrides)
        t0 = time.time()
        try:
            rec = run(cfg)
        except Exception as e:  # report and go on: this is a survey
            print(f"| {name} | - | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | |")
            continue
        dev = rec["curve"]["dev"]
        print(f"| {name} | {rec['params']['trainable']:,} | {dev[0]['dev_loss']:.4f} | {dev[-1]['dev_loss']:.4f} "
              f"| {rec['steps']} | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
