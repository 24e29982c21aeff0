"""The runner end to end on the tiny backbone: record schema, skip, determinism, CLI sweeps, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runners import results as R
from tests.conftest import ROOT, compose, shared_data

FAST = ("method=lora", "task=synth-compare", "runner.max_train_examples=16", "runner.max_steps=4", "runner.eval_steps=2")


def run_cfg(*overrides):
    from runners.train import run

    return run(compose(*FAST, *overrides))


def test_run_writes_a_complete_record(tmp_results):
    rec = run_cfg("seed=0")
    path = tmp_results / "tiny" / "synth-compare" / "lora" / "seed0.json"
    on_disk = json.loads(path.read_text())
    R.validate_record(on_disk)
    assert on_disk["metrics"] == rec["metrics"] and "acc" in on_disk["metrics"]
    assert on_disk["params"]["trainable"] > 0 and on_disk["params"]["total"] > on_disk["params"]["trainable"]
    assert on_disk["config"]["method"]["name"] == "lora" and on_disk["config"]["seed"] == 0
    assert on_disk["provenance"]["packages"]["torch"] and "git_dirty" in on_disk["provenance"]
    assert [p["step"] for p in on_disk["curve"]["dev"]][:1] == [0], "the dev curve starts at step 0"
    assert on_disk["curve"]["train"], "train losses are recorded"
    assert on_disk["split_sizes"] == {"train": 16, "dev": 8, "test": 8}
    phases = on_disk["timing_s"]  # the run's wall time by phase (runners/train.py Stopwatch)
    assert set(phases) == {"startup", "zero_shot", "train", "dev_loss", "answers"}, phases
    assert all(v >= 0 for v in phases.values()) and phases["train"] > 0 and phases["dev_loss"] > 0
    assert sum(phases.values()) <= on_disk["wall_time_s"] + 0.01, (phases, on_disk["wall_time_s"])
    preds = [json.loads(line) for line in (path.parent / "seed0.predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8 and set(preds[0]) == {"id", "prompt", "prediction", "reference"}
    # the trained module alone, reloadable onto a fresh backbone
    from pefts.io import load_peft
    from pefts.registry import build_method
    from runners.backbones import load_backbone

    cfg = compose(*FAST, "seed=0")
    fresh = build_method(load_backbone(cfg.backbone)[0], cfg.method)
    load_peft(fresh, str(path.parent / on_disk["peft_weights"]))


def test_a_record_names_the_torch_threads_it_ran_with(tmp_results):
    """runner.num_threads=1 is recorded as provenance.torch_threads = 1 (the runner passes torch's count)."""
    import torch

    before = torch.get_num_threads()
    try:
        assert run_cfg("seed=0", "runner.num_threads=1")["provenance"]["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_finished_run_is_skipped_without_training(tmp_results, monkeypatch):
    run_cfg("seed=1")
    import runners.train

    def no_training(*a, **k):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(runners.train, "HarnessTrainer", no_training)
    assert run_cfg("seed=1")["skipped"]
    with pytest.raises(runners.train.RunFailed, match="must not train"):  # force=true trains again
        run_cfg("seed=1", "force=true")


def test_changed_config_without_variant_is_an_error(tmp_results):
    from core.errors import UserError

    run_cfg("seed=2")
    with pytest.raises(UserError, match="different config"):
        run_cfg("seed=2", "method.r=2")
    assert run_cfg("seed=2", "method.r=2", "variant=lora-r2")["cell"] == "lora-r2"


def test_same_seed_same_metrics(tmp_results):
    a = run_cfg("seed=5", "force=true")
    b = run_cfg("seed=5", "force=true")
    assert a["curve"]["dev"] == b["curve"]["dev"] and a["metrics"] == b["metrics"]
    c = run_cfg("seed=6")
    assert c["curve"]["train"] != a["curve"]["train"], "another seed should change data order/initialization"


def test_labelled_loss_positions_change_no_result(tmp_results):
    """runner.loss_positions=labelled (the default) against all: the same training trajectory and answers;
    train and dev losses equal to the last bits (the sum over fewer ignored columns runs in another order)."""
    a = run_cfg("seed=7", "runner.loss_positions=all", "variant=all-positions")
    b = run_cfg("seed=7")
    assert a["metrics"] == b["metrics"] and a["dev"] == b["dev"]
    for part in ("train", "dev"):
        xs, ys = a["curve"][part], b["curve"][part]
        assert [x["step"] for x in xs] == [y["step"] for y in ys]
        key = "train_loss" if part == "train" else "dev_loss"
        assert all(abs(x[key] - y[key]) <= 1e-6 * abs(x[key]) for x, y in zip(xs, ys)), (xs, ys)
    pa, pb = (tmp_results / "tiny" / "synth-compare" / c / "seed7.predictions.jsonl" for c in ("all-positions", "lora"))
    assert pa.read_text() == pb.read_text()


def cli(*args, env_extra=None, timeout=600):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_seed_range_then_aggregate_then_skip(tmp_path):
    env = {"HARNESS_RESULTS": str(tmp_path / "runs")}
    args = ("backbone=tiny", "runner=debug", "logger=none", *FAST, "seed=0..1")
    first = cli(*args, env_extra=env)
    assert first.returncode == 0, first.stderr[-2000:]
    files = sorted(os.listdir(tmp_path / "runs" / "tiny" / "synth-compare" / "lora"))
    assert files == ["seed0.json", "seed0.peft.safetensors", "seed0.predictions.jsonl",
                     "seed1.json", "seed1.peft.safetensors", "seed1.predictions.jsonl"]
    assert "| tiny | synth-compare | lora | acc |" in first.stdout and "| 2 |" in first.stdout
    again = cli(*args, env_extra=env)
    assert again.returncode == 0 and again.stdout.count("skipped (exists)") == 2


def test_main_job_is_one_table_of_iapt_lora_and_the_untrained_backbone(tmp_path):
    """`make run` (experiment=main): one sweep over IAPT and LoRA at one budget, then a table with both and
    the untrained row; shrunk here to the tiny backbone (the real job: SmolLM2-135M, conf/runner/offline.yaml)."""
    env = {"HARNESS_RESULTS": str(tmp_path / "runs")}
    out = cli("experiment=main", "backbone=tiny", "runner=debug", "runner.zero_shot=true", "logger=none",
              "task=synth-compare", env_extra=env)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| tiny | synth-compare |")]
    assert [r.split(" | ")[2] for r in rows] == ["iapt", "lora", "zero-shot"], out.stdout[-2000:]


@pytest.mark.parametrize(
    "arg, message",
    [("method=lorx", "unknown method 'lorx'; valid: "), ("task=rtee", "Did you mean 'rte'?"),
     ("method.rr=1", "method.rr"), ("seed=4..1", "empty range"),
     ("runner.lr=abc", "error: runner.lr=abc: Value 'abc' of type 'str' could not be converted to Float"),
     ("runner.max_steps=1.5", "error: runner.max_steps=1.5: Value '1.5' of type 'float' could not be converted to "
                              "Integer"),
     ("runner.resume=maybe", "error: runner.resume=maybe: Value 'maybe' is not a valid bool")],
)
def test_bad_input_is_one_line_and_nonzero(arg, message, tmp_path):
    res = cli("backbone=tiny", "runner=debug", "logger=none", arg, env_extra={"HARNESS_RESULTS": str(tmp_path)},
              timeout=120)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr[-1500:]
    assert "Traceback" not in res.stderr, res.stderr[-1500:]


def test_missing_local_file_names_it(tmp_path, tmp_results):
    from tasks.registry import build_task

    with pytest.raises(FileNotFoundError, match="train.tsv"):
        build_task(compose("task=rte").task).splits(str(tmp_path))


def test_rte_from_shared_data_end_to_end(tmp_results):
    data = shared_data("glue", "RTE")
    from tasks.registry import build_task

    sizes = {k: len(v) for k, v in build_task(compose("task=rte").task).splits(data).items()}
    assert sizes == {"train": 2490, "dev": 138, "test": 139}, "Appendix C: validation (277) halved"
    rec = run_cfg("task=rte", f"data_dir={data}", "runner.max_steps=2", "runner.max_test_examples=4")
    assert rec["split_sizes"]["test"] == 4 and "acc" in rec["metrics"]


def test_wandb_offline_run_without_network(tmp_results, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    rec = run_cfg("seed=9", "logger=wandb", "logger.mode=auto", f"logger.dir={tmp_path}")
    assert rec["wandb_dir"].startswith(str(tmp_path / "wandb" / "offline-run-")), rec.get("wandb_dir")
    assert any(f.endswith(".wandb") for f in os.listdir(rec["wandb_dir"])), "the offline run holds its log"


@pytest.mark.slow
def test_smollm2_lora_learns_the_synthetic_task(tmp_results):
    """Real pretrained backbone: dev loss falls and test accuracy beats the untrained model (~2 min)."""
    from runners.train import run

    rec = run(compose("method=lora", "logger=none", "runner.max_steps=20", "runner.eval_steps=10",
                      "runner.max_test_examples=32", debug=False))
    dev = [p["dev_loss"] for p in rec["curve"]["dev"]]
    assert dev[-1] < 0.5 * dev[0], dev
    zero = json.loads((tmp_results / "smollm2-135m" / "synth-compare" / "zero-shot" / "seed0.json").read_text())
    assert rec["metrics"]["acc"] > zero["metrics"]["acc"] + 30


def test_likelihood_scoring_picks_the_most_likely_label(tmp_results):
    """runner.scoring=likelihood: each prediction is the label with the highest summed log-probability of
    its response tokens (EOS included), checked against a direct per-example computation."""
    import torch

    from runners.backbones import load_backbone
    from runners.scoring import predict_likelihood
    from tasks.base import format_example
    from tasks.registry import build_task

    cfg = compose("task=sst2", f"data_dir={os.path.join(ROOT, 'tests', 'fixtures', 'sst2')}")
    task = build_task(cfg.task)
    examples = task.splits(cfg.data_dir)["test"]
    torch.manual_seed(0)
    model, tok = load_backbone(cfg.backbone)
    preds = predict_likelihood(model, tok, examples, task.labels, "llama2", 256, batch_size=3, device="cpu")
    for ex, pred in zip(examples, preds):
        best, best_lp = None, -float("inf")
        for label in task.labels:
            prompt, resp = format_example(tok, ex.query, label, "llama2")
            ids = torch.tensor([prompt + resp])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            total = sum(lp[len(prompt) - 1 + t, tok_id].item() for t, tok_id in enumerate(resp))
            best, best_lp = (label, total) if total > best_lp else (best, best_lp)
        assert pred == best
    rec = run_cfg("method=lora", "task=sst2", f"data_dir={os.path.join(ROOT, 'tests', 'fixtures', 'sst2')}",
                  "runner.scoring=likelihood")
    assert rec["config"]["runner"]["scoring"] == "likelihood" and "acc" in rec["metrics"]


def test_likelihood_scoring_needs_a_label_set(tmp_results):
    from core.errors import UserError

    with pytest.raises(UserError, match="runner.scoring=likelihood needs a classification task with a label set; "
                                        "task 'synth-compare' has none"):
        run_cfg("method=lora", "task=synth-compare", "runner.scoring=likelihood")


def test_dtype_auto_is_float32_on_cpu_and_recorded_resolved(tmp_results, monkeypatch):
    import torch

    from runners.train import resolve_dtype

    assert resolve_dtype("auto", "cpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "auto") == "bfloat16", "Ampere+ GPUs train in bf16 by default"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "auto") == "float32"
    monkeypatch.undo()
    rec = run_cfg("method=lora", "task=synth-compare")
    assert rec["config"]["runner"]["dtype"] == "float32", "the record names the dtype it ran with"


def test_selection_run_reads_no_test_split(tmp_results, monkeypatch):
    """runner.eval_test=false (the learning-rate search): dev results only, no test predictions, no zero-shot
    row (it reads test), and the record is never aggregated into a table."""
    import runners.train as T
    from runners.aggregate import scan

    asked = []
    real = T.predictions
    monkeypatch.setattr(T, "predictions", lambda *a, **kw: asked.append(kw.get("split", "test")) or real(*a, **kw))
    rec = run_cfg("seed=0", "runner.eval_test=false", "runner.zero_shot=true", "runner.dev_generation=true")
    assert rec["metrics"] == {} and "loss" in rec["dev"] and "acc" in rec["dev"]
    assert asked == ["dev"], "only the dev split is predicted"
    cell = tmp_results / "tiny" / "synth-compare"
    assert (cell / "lora" / "seed0.json").exists() and not (cell / "lora" / "seed0.predictions.jsonl").exists()
    assert not (cell / "zero-shot").exists()
    assert scan(str(tmp_results)) == ([], [])


def test_zero_shot_row_is_shared_by_cells_with_other_learning_rates(tmp_results):
    """The untrained row depends on how test answers are made, not on the training settings of the run that
    wrote it: methods at their own learning rates (the CPU tables) share it; another prompt length does not."""
    from runners.aggregate import scan

    run_cfg("seed=0", "runner.zero_shot=true", "runner.lr=1e-3")
    run_cfg("seed=0", "runner.zero_shot=true", "runner.lr=3e-3", "method=iapt")  # reuses the row
    records, problems = scan(str(tmp_results))
    assert not problems and sorted(r["cell"] for r in records) == ["iapt", "lora", "zero-shot"]
    assert R.comparable(records[0]["config"], drop_method=True)["runner"].keys() == set(R.ZERO_SHOT_RUNNER)
    with pytest.raises(Exception, match="different config"):
        run_cfg("seed=0", "runner.zero_shot=true", "runner.max_seq_len=64", "method=iapt", "variant=x")


def test_init_peft_starts_from_another_runs_weights(tmp_results, tmp_path):
    """runner.init_peft (id-spam.txt Table 11: tuned on a source task first): the run starts from the saved
    weights, not the method's initialization (step 0's dev loss is the source run's best); a missing file or
    another method's weights is one clear error."""
    from core.errors import UserError

    src = run_cfg("seed=0", "runner.max_steps=8")
    weights = tmp_results / "tiny" / "synth-compare" / "lora" / "seed0.peft.safetensors"
    cont = run_cfg("seed=0", "variant=cont", f"runner.init_peft={weights}")
    assert cont["curve"]["dev"][0]["dev_loss"] == pytest.approx(src["dev"]["loss"], rel=1e-5), "step 0 = the source's best"
    fresh = run_cfg("seed=0", "variant=fresh")
    assert fresh["curve"]["dev"][0]["dev_loss"] != pytest.approx(cont["curve"]["dev"][0]["dev_loss"], rel=1e-5)
    with pytest.raises(UserError, match="runner.init_peft='nope.safetensors' is not a file"):
        run_cfg("seed=0", "variant=x", "runner.init_peft=nope.safetensors")
    with pytest.raises(UserError, match="same method on the same backbone"):
        run_cfg("seed=0", "variant=y", "method=iapt", f"runner.init_peft={weights}")


def test_length_grouped_batches_are_transformers_sampler_and_deterministic(tmp_results, monkeypatch):
    """runner.group_by_length=true trains through transformers' LengthGroupedSampler (rows of similar length
    batched together: less padding, the same rows in another order); the same seed repeats the run exactly."""
    from transformers import Trainer

    seen, original = [], Trainer._get_train_sampler
    monkeypatch.setattr(Trainer, "_get_train_sampler",
                        lambda self, ds=None: seen.append(original(self, ds)) or seen[-1])
    a = run_cfg("seed=8", "runner.group_by_length=true", "variant=grouped")
    assert type(seen[-1]).__name__ == "LengthGroupedSampler"
    b = run_cfg("seed=8", "runner.group_by_length=true", "variant=grouped", "force=true")
    assert a["curve"] == b["curve"] and a["metrics"] == b["metrics"]
    assert a["config"]["runner"]["group_by_length"] is True
    run_cfg("seed=8")
    assert type(seen[-1]).__name__ == "RandomSampler", "the default is uniformly shuffled batches"
