"""Figures from result files (matplotlib, PNG under results/figures/).

    python -m scripts.figures rational peft=results/.../seed0.peft.safetensors [out=results/figures/x.png]
        IAPT Figure 4: each layer group's learned rational activation against GELU and the initial fit
    python -m scripts.figures params results_dir=results/cpu/runs task=sst2 [backbone=smollm2-135m]
        any grid's cells: median test score against tunable parameters, one point per cell
    python -m scripts.figures budget results_dir=... task=boolq [methods=parade,lora,ia3_proj] [backbone=llama2-7b]
        PARADE Figure 2 (and IAPT Figure 2 with methods=iapt,lpt,lora): median test score against tunable
        parameters, one curve per method, one point per cell (PARADE's r swept by conf/experiment/parade_fig2.yaml,
        IAPT's and LPT's m by conf/experiment/iapt_fig2.yaml; LoRA r / (IA)^3 dim cells likewise)
    python -m scripts.figures length results_dir=... task=boolq [methods=iapt,lpt] [backbone=llama2-7b]
        IAPT Figure 3: median test score against the soft-prompt length (record config method.n_tokens), one
        curve per method (conf/experiment/iapt_fig3.yaml)
    python -m scripts.figures layer results_dir=... task=rte [methods=idspam,lpt] [backbone=roberta-large]
        ID-SPAM Figure 2: median test score (MRPC: mean of acc and F1, the task's headline metric) against the
        layer index m the soft prompt is prepended to (record config method.layer; 0 = the input embeddings),
        one curve per method (conf/experiment/idspam_fig2.yaml)
"""

from __future__ import annotations

import os
import re
import statistics
import sys

import torch

from core.errors import UserError, exit_on_user_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = os.path.join(ROOT, "results", "figures")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def rationals(peft_path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{parameter prefix: (numerator, denominator)} of every rational activation in a PEFT weights file."""
    from safetensors.torch import load_file

    state = load_file(peft_path)
    out = {}
    for name, tensor in state.items():
        if name.endswith(".numerator"):
            prefix = name[: -len(".numerator")]
            if f"{prefix}.denominator" in state:
                out[prefix] = (tensor.float(), state[f"{prefix}.denominator"].float())
    if not out:
        raise UserError(f"peft='{peft_path}' holds no rational activation (numerator/denominator tensors)")
    return dict(sorted(out.items(), key=lambda kv: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", kv[0])]))


def plot_rationals(peft_path: str, out: str, lim: float = 8.0) -> str:
    from pefts.blocks.activations import Rational

    plt = _plt()
    acts = rationals(peft_path)
    x = torch.linspace(-lim, lim, 801)
    cols = min(4, len(acts))
    rows = (len(acts) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    init = Rational()
    with torch.no_grad():
        y_init, y_gelu = init(x), torch.nn.functional.gelu(x)
        for ax, (name, (a, b)) in zip(axes.flat, acts.items()):
            r = Rational(a.tolist(), b.tolist())
            ax.plot(x, y_gelu, color="0.6", lw=2, label="GELU")
            ax.plot(x, y_init, "--", color="C1", lw=1, label="rational GELU (init)")
            ax.plot(x, r(x), color="C0", lw=1.2, label="learned")
            change = float((r(x) - y_init).abs().max())
            ax.set_title(f"{_short(name)}\nmax |learned - init| = {change:.2g}", fontsize=8)
            ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(acts):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Learned rational activations ({os.path.basename(peft_path)})", fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def _short(name: str) -> str:
    nums = re.findall(r"\d+", name)
    return f"generator group {nums[-1]}" if nums else name


def _save(fig, out: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, out)
    _plt().close(fig)
    return out


def _cells(results_dir: str, backbone: str | None, task: str) -> dict[str, list[dict]]:
    from runners.aggregate import scan

    records, _ = scan(results_dir)
    cells: dict[str, list[dict]] = {}
    for r in records:
        if r["task"] == task and (backbone is None or r["backbone"] == backbone):
            cells.setdefault(r["cell"], []).append(r)
    if not cells:
        raise UserError(f"no finished records of task '{task}' under results_dir='{results_dir}'")
    return cells


def _median(recs: list[dict]) -> float:
    return statistics.median(float(next(iter(r["metrics"].values()))) for r in recs)


def plot_params(results_dir: str, task: str, out: str, backbone: str | None = None) -> str:
    plt = _plt()
    cells = _cells(results_dir, backbone, task)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for cell, recs in sorted(cells.items()):
        n = recs[0]["params"].get("trainable")
        if n:
            ax.scatter(n, _median(recs), s=18)
            ax.annotate(f"{cell} (n={len(recs)})", (n, _median(recs)), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set(xlabel="tunable parameters", ylabel=f"{task}: median test score", title=f"{task}: score vs parameters")
    fig.tight_layout()
    return _save(fig, out)


def plot_length(results_dir: str, task: str, out: str, methods=("iapt", "lpt"), backbone: str | None = None) -> str:
    """IAPT Figure 3: score against the soft-prompt length (record config method.n_tokens), a curve per method."""
    pts = curves(results_dir, task, list(methods), lambda r: r["config"]["method"].get("n_tokens"), backbone)
    return _plot_curves(pts, out, "prompt length l_sp (soft tokens)", f"{task}: median test score",
                        f"{task}: score vs prompt length", logx=True)


def curves(results_dir: str, task: str, methods: list[str], x_of, backbone: str | None = None
           ) -> dict[str, list[tuple[float, float, int]]]:
    """{method: [(x, median test score, n seeds)] sorted by x}: one point per cell of each method; x_of(record)
    reads the x value from a record (None: the cell is left out)."""
    out: dict[str, list[tuple[float, float, int]]] = {}
    for recs in _cells(results_dir, backbone, task).values():
        x = x_of(recs[0])
        if recs[0]["method"] in methods and x is not None:
            out.setdefault(recs[0]["method"], []).append((float(x), _median(recs), len(recs)))
    if not out:
        raise UserError(f"no finished records of {', '.join(methods)} on task '{task}' under "
                        f"results_dir='{results_dir}' with the figure's x value")
    return {m: sorted(out[m]) for m in methods if m in out}


def _plot_curves(pts: dict, out: str, xlabel: str, ylabel: str, title: str, logx: bool = False) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for method, p in pts.items():
        ax.plot([q[0] for q in p], [q[1] for q in p], "o-", ms=3, label=f"{method} (n={min(q[2] for q in p)}+)")
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


def plot_budget(results_dir: str, task: str, out: str, methods=("parade", "lora", "ia3_proj"),
                backbone: str | None = None) -> str:
    """PARADE Figure 2: score against the tunable parameters (record params.trainable), a curve per method."""
    pts = curves(results_dir, task, list(methods), lambda r: r["params"].get("trainable"), backbone)
    return _plot_curves(pts, out, "tunable parameters", f"{task}: median test score",
                        f"{task}: score vs tunable parameters", logx=True)


def plot_layer(results_dir: str, task: str, out: str, methods=("idspam", "lpt"), backbone: str | None = None) -> str:
    """ID-SPAM Figure 2: score against the layer index m of the prompt (record config method.layer)."""
    pts = curves(results_dir, task, list(methods), lambda r: r["config"]["method"].get("layer"), backbone)
    return _plot_curves(pts, out, "layer index m (0 = input embeddings)", f"{task}: median test score",
                        f"{task}: score vs prompt layer")


def plot_seeds(records: list[dict], tasks: list[str], cells: list[str], out: str, title: str = "",
               backbone: str | None = None) -> str | None:
    """A paper table's cells seed by seed: one panel per task, one column per cell, a dot per seed (the
    same seed the same colour in every column, so paired differences can be read off) and a bar at the
    median; None when no record belongs to the table. scripts/table.py writes it beside each table."""
    scores: dict[tuple[str, str], dict[int, float]] = {}
    for r in records:
        if r["task"] in tasks and r["cell"] in cells and (backbone is None or r["backbone"] == backbone):
            scores.setdefault((r["task"], r["cell"]), {})[int(r["seed"])] = float(next(iter(r["metrics"].values())))
    if not scores:
        return None
    plt = _plt()
    seeds = sorted({s for d in scores.values() for s in d})
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(seeds)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(1.2 + 0.55 * len(cells) * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, cell in enumerate(cells):
            d = scores.get((task, cell), {})
            for s, v in d.items():
                ax.scatter(i + 0.08 * (seeds.index(s) - (len(seeds) - 1) / 2), v, s=14, color=colours[s],
                           label=f"seed {s}" if i == 0 or (task, cells[0]) not in scores else None)
            if d:
                ax.hlines(statistics.median(d.values()), i - 0.3, i + 0.3, color="black", lw=1)
        ax.set_xticks(range(len(cells)), cells, rotation=60, ha="right", fontsize=7)
        ax.set(title=task, ylabel="test score")
    handles, labels = axes[0][0].get_legend_handles_labels()
    by = dict(zip(labels, handles))
    if by:
        axes[0][-1].legend(by.values(), by.keys(), fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def dev_curves(records: list[dict], tasks: list[str], cells: list[str], backbone: str | None = None) -> dict:
    """{(task, cell): (evaluation steps, median dev loss over seeds at each, [each seed's {step: loss}])} of the
    records that belong to the table and have a dev curve."""
    runs: dict[tuple[str, str], list[dict[int, float]]] = {}
    for r in records:
        if r["task"] in tasks and r["cell"] in cells and (backbone is None or r["backbone"] == backbone):
            dev = {int(pt["step"]): float(pt["dev_loss"]) for pt in (r.get("curve") or {}).get("dev", [])}
            if dev:
                runs.setdefault((r["task"], r["cell"]), []).append(dev)
    out = {}
    for key, devs in runs.items():
        steps = sorted({k for d in devs for k in d})
        out[key] = (steps, [statistics.median(d[k] for d in devs if k in d) for k in steps], devs)
    return out


def plot_dev_curves(records: list[dict], tasks: list[str], cells: list[str], out: str, title: str = "",
                    backbone: str | None = None) -> str | None:
    """A table's dev-loss curves: one panel per task, a colour per cell, a thin line per seed and a thick one
    at the median over seeds at each evaluation step (log scale: step 0 is the untrained model's loss, an order
    of magnitude above the rest); None when no record of the table has a dev curve. Beside the table, it shows
    which cells left the chance plateau and whether 100 steps had stopped improving. The frame is the trained
    steps' range: step 0's loss leaves it at the top."""
    curves = dev_curves(records, tasks, cells, backbone)
    if not curves:
        return None
    plt = _plt()
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(cells)}
    fig, axes = plt.subplots(1, len(tasks), figsize=(0.6 + 3.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for cell in cells:
            if (task, cell) not in curves:
                continue
            steps, median, runs = curves[task, cell]
            for dev in runs:
                ax.plot(sorted(dev), [dev[k] for k in sorted(dev)], color=colours[cell], lw=0.5, alpha=0.4)
            ax.plot(steps, median, color=colours[cell], lw=1.8, label=f"{cell} (n={len(runs)})")
        ax.set(title=task, xlabel="optimizer step", ylabel="dev loss", yscale="log")
        trained = [x for (t, _), (steps, _, runs) in curves.items() if t == task
                   for dev in runs for k, x in dev.items() if k > 0]
        if trained:  # frame the trained steps; step 0 (the untrained loss, 5-20 here) runs off the top
            ax.set_ylim(min(trained) / 1.15, max(trained) * 1.3)
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no run yet", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("rational", "params", "length", "budget", "layer"):
        raise UserError("usage: python -m scripts.figures rational|params|length|budget|layer key=value ... "
                        "(see the docstring)")
    kind, opts = argv[0], dict(a.partition("=")[::2] for a in argv[1:])
    if kind == "rational":
        if "peft" not in opts:
            raise UserError("scripts.figures rational needs peft=<file.peft.safetensors> (an IAPT run's weights)")
        out = opts.get("out") or os.path.join(FIGURES, "rational_" + os.path.basename(opts["peft"]).split(".")[0] + ".png")
        print(plot_rationals(opts["peft"], out))
        return
    if "task" not in opts:
        raise UserError(f"scripts.figures {kind} needs task=<name> (and results_dir=, backbone=)")
    results_dir = opts.get("results_dir", os.path.join(ROOT, "results", "runs"))
    out = opts.get("out") or os.path.join(FIGURES, f"{kind}_{opts['task']}.png")
    if kind == "params":
        print(plot_params(results_dir, opts["task"], out, opts.get("backbone")))
        return
    plot = {"budget": plot_budget, "layer": plot_layer, "length": plot_length}[kind]
    methods = opts["methods"].split(",") if opts.get("methods") else None
    print(plot(results_dir, opts["task"], out, *([methods] if methods else []), backbone=opts.get("backbone")))


if __name__ == "__main__":
    exit_on_user_error(main, sys.argv[1:])
