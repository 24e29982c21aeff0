"""Figures render from result files: the learned rational activations of saved IAPT weights, score vs
parameters and score vs prompt length from hand-made records (scripts/figures.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from core.errors import UserError
from scripts import figures


def test_rational_figure_from_saved_iapt_weights(tmp_path):
    from pefts.io import save_peft
    from pefts.registry import build_method
    from runners.backbones import load_backbone
    from tests.conftest import compose

    cfg = compose("method=iapt")
    torch.manual_seed(0)
    model, _ = load_backbone(cfg.backbone)
    fam = build_method(model, cfg.method)
    with torch.no_grad():  # a "learned" activation: move group 0's a_2
        next(p for n, p in fam.named_parameters() if n.endswith("numerator")).data[2] += 0.1
    save_peft(fam, str(tmp_path / "w.peft.safetensors"))
    acts = figures.rationals(str(tmp_path / "w.peft.safetensors"))
    n_layers = model.config.num_hidden_layers
    assert len(acts) == -(-n_layers // cfg.method.share_every), "one activation per layer group"
    out = figures.plot_rationals(str(tmp_path / "w.peft.safetensors"), str(tmp_path / "r.png"))
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="holds no rational activation"):
        lora = tmp_path / "lora.peft.safetensors"
        from safetensors.torch import save_file

        save_file({"x.lora_A.weight": torch.zeros(2, 2)}, str(lora))
        figures.rationals(str(lora))


def test_score_figures_from_records(tmp_path):
    runs = tmp_path / "runs"
    for cell, n_tokens, acc, params in (("iapt", 4, 80.0, 1000), ("iapt-len8", 8, 82.0, 1000), ("lora", None, 85.0, 5000)):
        folder = runs / "smollm2-135m" / "sst2" / cell
        folder.mkdir(parents=True)
        method = {"name": "iapt", "n_tokens": n_tokens} if n_tokens else {"name": "lora"}
        rec = {"schema": 1, "backbone": "smollm2-135m", "task": "sst2", "method": method["name"], "variant": None,
               "cell": cell, "seed": 0, "status": "ok", "metrics": {"acc": acc}, "dev": {},
               "params": {"trainable": params}, "config": {"method": method}, "provenance": {}, "wall_time_s": 1.0,
               "curve": {}}
        (folder / "seed0.json").write_text(json.dumps(rec))
    for out in (figures.plot_params(str(runs), "sst2", str(tmp_path / "p.png")),
                figures.plot_length(str(runs), "sst2", str(tmp_path / "l.png"), methods=["iapt"])):
        assert open(out, "rb").read(4) == b"\x89PNG"
    with pytest.raises(UserError, match="no finished records of task 'rte'"):
        figures.plot_params(str(runs), "rte", str(tmp_path / "x.png"))


def _write(runs, backbone, task, cell, method, seed, acc, params=None):
    folder = runs / backbone / task / cell
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"schema": 1, "backbone": backbone, "task": task, "method": method["name"], "variant": cell,
           "cell": cell, "seed": seed, "status": "ok", "metrics": {"acc-f1": acc, "acc": acc + 1}, "dev": {},
           "params": {"trainable": params}, "config": {"method": method}, "provenance": {}, "wall_time_s": 1.0,
           "curve": {}}
    (folder / f"seed{seed}.json").write_text(json.dumps(rec))


def test_budget_figure_parade_fig2(tmp_path):
    """PARADE Figure 2: a curve per method over the records' tunable parameters (medians over seeds)."""
    runs = tmp_path / "runs"
    for r, acc in ((3, 80.0), (12, 84.0), (48, 85.0)):
        for seed in (0, 1):
            _write(runs, "llama2-7b", "boolq", f"parade-r{r}", {"name": "parade", "bottleneck": r}, seed,
                   acc + seed, params=r * 1000)
    for r, acc in ((4, 79.0), (16, 82.0)):
        _write(runs, "llama2-7b", "boolq", f"lora-r{r}", {"name": "lora", "r": r}, 0, acc, params=r * 3000)
    pts = figures.curves(str(runs), "boolq", ["parade", "lora", "ia3_proj"], lambda r: r["params"]["trainable"])
    assert pts["parade"] == [(3000.0, 80.5, 2), (12000.0, 84.5, 2), (48000.0, 85.5, 2)], "x sorted, headline metric"
    assert list(pts) == ["parade", "lora"], "a method without records has no curve"
    out = figures.plot_budget(str(runs), "boolq", str(tmp_path / "b.png"))
    assert open(out, "rb").read(4) == b"\x89PNG"
    figures.main(["budget", f"results_dir={runs}", "task=boolq", "methods=parade", f"out={tmp_path / 'c.png'}"])
    assert (tmp_path / "c.png").exists()


def test_layer_figure_idspam_fig2(tmp_path):
    """ID-SPAM Figure 2: score against the layer index read from each record's config (method.layer)."""
    runs = tmp_path / "runs"
    for method, accs in (("idspam", (70.0, 75.0, 72.0)), ("lpt", (65.0, 71.0, 69.0))):
        for m, acc in zip((0, 12, 23), accs):
            _write(runs, "roberta-large", "rte", f"{method}-m{m}", {"name": method, "layer": m}, 0, acc)
    _write(runs, "roberta-large", "rte", "idspam", {"name": "idspam", "layer": None}, 0, 99.0)  # no m: left out
    pts = figures.curves(str(runs), "rte", ["idspam", "lpt"], lambda r: r["config"]["method"].get("layer"))
    assert pts["idspam"] == [(0.0, 70.0, 1), (12.0, 75.0, 1), (23.0, 72.0, 1)]
    figures.main(["layer", f"results_dir={runs}", "task=rte", f"out={tmp_path / 'l.png'}"])
    assert open(tmp_path / "l.png", "rb").read(4) == b"\x89PNG"
    with pytest.raises(UserError, match="no finished records of idspam, lpt on task 'mrpc'|no finished records of task"):
        figures.plot_layer(str(runs), "mrpc", str(tmp_path / "x.png"))


def test_length_figure_iapt_fig3(tmp_path):
    """IAPT Figure 3: a curve per method over the prompt length read from each record's config (n_tokens)."""
    runs = tmp_path / "runs"
    for method, accs in (("iapt", (80.0, 83.0, 82.0)), ("lpt", (75.0, 78.0, 74.0))):
        for n, acc in zip((1, 4, 32), accs):
            for seed in (0, 1, 2):
                _write(runs, "llama2-7b", "boolq", f"{method}-len{n}", {"name": method, "n_tokens": n}, seed,
                       acc + seed)
    pts = figures.curves(str(runs), "boolq", ["iapt", "lpt"], lambda r: r["config"]["method"].get("n_tokens"))
    assert pts["lpt"] == [(1.0, 76.0, 3), (4.0, 79.0, 3), (32.0, 75.0, 3)], "median over seeds, sorted by length"
    figures.main(["length", f"results_dir={runs}", "task=boolq", f"out={tmp_path / 'f3.png'}"])
    assert open(tmp_path / "f3.png", "rb").read(4) == b"\x89PNG"
    with pytest.raises(UserError, match="no finished records of lora on task 'boolq'"):
        figures.main(["length", f"results_dir={runs}", "task=boolq", "methods=lora", f"out={tmp_path / 'x.png'}"])


@pytest.mark.parametrize("experiment,point,cell", [
    ("parade_fig2", ["method.bottleneck=48", "task=e2e"], "parade-r48"),
    ("iapt_fig2", ["method=lpt", "method.bottleneck=64", "task=e2e"], "lpt-m64"),
    ("iapt_fig3", ["method.n_tokens=16"], "iapt-len16"),
    ("idspam_fig2", ["method=lpt", "method.layer=7", "task=rte"], "lpt-m7"),
])
def test_figure_grids_compose(experiment, point, cell):
    """Each figure's grid composes; a grid point is its own cell, named from the swept value."""
    from runners import table_plan
    from runners.results import cell_name
    from tests.conftest import compose

    cfg, axes = table_plan.grid(experiment)
    assert axes["seed"] and axes["task"]
    assert cell_name(compose(f"experiment={experiment}", *point, debug=False)) == cell


def test_seeds_plot_of_a_table(tmp_path):
    """Every seed of every cell, one panel per task; records of other tables are left out; None when the
    table has no record."""
    from scripts.figures import plot_seeds

    recs = [{"backbone": "b", "task": t, "cell": c, "seed": s, "metrics": {"acc": 50.0 + 10 * i + s}}
            for i, c in enumerate(("lora", "iapt")) for t in ("sst2", "rte") for s in range(3)]
    recs.append({"backbone": "b", "task": "boolq", "cell": "lora", "seed": 0, "metrics": {"acc": 1.0}})
    out = plot_seeds(recs, ["sst2", "rte"], ["lora", "iapt", "zero-shot"], str(tmp_path / "t.png"), title="t")
    assert out and os.path.getsize(out) > 0
    assert plot_seeds(recs, ["copa"], ["lora"], str(tmp_path / "none.png")) is None
    assert not (tmp_path / "none.png").exists()


def test_dev_loss_curves_of_a_table(tmp_path):
    """The median over seeds at each evaluation step (a seed missing a step counts where it has one); other
    tables' records and records without a dev curve are left out; the plot is written, None without curves."""
    from scripts.figures import dev_curves, plot_dev_curves

    def rec(task, cell, seed, losses, backbone="b"):
        return {"backbone": backbone, "task": task, "cell": cell, "seed": seed,
                "curve": {"dev": [{"step": 25 * i, "dev_loss": x} for i, x in enumerate(losses)]}}

    recs = [rec("sst2", "lora", 0, [5.0, 0.3, 0.2]), rec("sst2", "lora", 1, [6.0, 0.5, 0.1]),
            rec("sst2", "lora", 2, [7.0, 0.4]), rec("sst2", "iapt", 0, [15.0, 0.9, 0.3]),
            rec("sst2", "lora", 3, [1.0, 1.0, 1.0], backbone="other"), rec("rte", "lora", 0, []),
            rec("boolq", "lora", 0, [1.0])]
    curves = dev_curves(recs, ["sst2", "rte"], ["lora", "iapt"], backbone="b")
    assert set(curves) == {("sst2", "lora"), ("sst2", "iapt")}
    steps, median, runs = curves["sst2", "lora"]
    assert steps == [0, 25, 50] and median == pytest.approx([6.0, 0.4, 0.15]) and len(runs) == 3
    out = plot_dev_curves(recs, ["sst2", "rte"], ["lora", "iapt"], str(tmp_path / "d.png"), title="t", backbone="b")
    assert out and os.path.getsize(out) > 0
    assert plot_dev_curves(recs, ["copa"], ["lora"], str(tmp_path / "none.png")) is None
