"""The encoder path (issue #13, ID-SPAM's setting): a classification head on a RoBERTa-architecture encoder,
trained through the same runner and records as the decoders, with ID-SPAM's own protocol preset.

    .venv/bin/python -m pytest tests/test_encoder.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from core.errors import UserError
from pefts.io import load_peft
from pefts.registry import build_peft
from runners.backbones import load_backbone
from runners.bilevel import make_optimizer
from runners.data import ClassCollator, encode_classification
from runners.kind import Kind
from runners.scoring import predict_head
from runners.train import run
from tasks.registry import build_task
from tests.conftest import ROOT, compose, shared_data

FIX = os.path.join(ROOT, "tests", "fixtures")
ENC = ("backbone=tiny-roberta", "task=rte", f"data_dir={os.path.join(FIX, 'rte')}", "runner.max_steps=4",
       "runner.eval_steps=2", "runner.num_threads=1")
HEAD_SIZE = 64 * 64 + 64 + 64 * 2 + 2  # RoBERTa's head: dense d x d + bias, out_proj d x 2 + bias
TABLE2 = ["idspam", "lora", "lpt", "prompt_tuning", "p_tuning", "smop", "dept", "full"]  # id-spam.txt Table 2


def fresh(cfg):
    """The method on a fresh tiny encoder with its head trainable, as the runner builds it."""
    torch.manual_seed(123)  # another head and method init than the trained run's
    model, tok = load_backbone(cfg.backbone, num_labels=2)
    for p in model.parameters():
        p.requires_grad_(False)
    model = build_peft(model, cfg.method).model
    Kind.of(cfg.backbone).train_head(model)
    return model, tok


@pytest.mark.parametrize("method", TABLE2)
def test_table2_methods_train_a_head_and_record(method, tmp_results):
    rec = run(compose(*ENC, f"method={method}", "seed=0"))
    assert rec["status"] == "ok" and rec["config"]["runner"]["scoring"] == "head"
    assert set(rec["metrics"]) >= {"acc", "f1", "acc-f1"}
    assert rec["params"]["head"] == HEAD_SIZE, rec["params"]
    assert rec["params"]["trainable"] > (HEAD_SIZE if method != "full" else 0)
    rows = [json.loads(x) for x in open(os.path.join(tmp_results, "tiny-roberta", "rte", method,
                                                     "seed0.predictions.jsonl"))]
    assert rows and {r["prediction"] for r in rows} <= {"entailment", "not entailment"}


@pytest.mark.parametrize("method", ["idspam", "lora", "prompt_tuning"])
def test_saved_weights_reproduce_the_predictions(method, tmp_results):
    """The head is saved with the method's weights: a fresh encoder (another head init) loads them alone
    and answers exactly as the trained run did."""
    cfg = compose(*ENC, f"method={method}", "seed=1", "runner.lr=1e-2")
    run(cfg)
    folder = os.path.join(tmp_results, "tiny-roberta", "rte", method)
    model, tok = fresh(cfg)
    load_peft(model, os.path.join(folder, "seed1.peft.safetensors"))
    test = build_task(cfg.task).splits(cfg.data_dir)["test"][:cfg.runner.max_test_examples]
    preds = predict_head(model, tok, test, ["entailment", "not entailment"], 256, 8, "cpu")
    saved = [json.loads(x)["prediction"] for x in open(os.path.join(folder, "seed1.predictions.jsonl"))]
    assert preds == saved


@pytest.mark.parametrize("method", ["idspam", "lpt", "prompt_tuning", "lora"])
def test_a_batch_row_equals_the_row_alone(method):
    """Right-padded batches (the head reads column 0, <s>, as HF's RoBERTa head does): each row's logits
    are those it gets alone, whatever the other rows' lengths."""
    cfg = compose("backbone=tiny-roberta", f"method={method}", "task=rte")
    model, tok = fresh(cfg)
    model.eval()
    examples = build_task(cfg.task).splits(os.path.join(FIX, "rte"))["train"][:4]
    rows = encode_classification(examples, tok, ["entailment", "not entailment"], 256)
    collate = ClassCollator(tok.pad_token_id)
    batch = collate(rows)
    assert len({len(r["input_ids"]) for r in rows}) > 1, "the rows should differ in length"
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for i, r in enumerate(rows):
            one = collate([r])
            alone = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits
            torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-4)


def test_prompt_baselines_go_behind_s_and_keep_real_positions():
    """Encoder soft prompts sit right behind <s> (the head reads <s>), and RoBERTa's position ids skip them."""
    cfg = compose("backbone=tiny-roberta", "method=prompt_tuning", "task=rte", "method.num_virtual_tokens=3")
    model, tok = fresh(cfg)
    seen = {}
    emb = model.roberta.embeddings
    handle = emb.register_forward_pre_hook(lambda m, a, k: seen.update(k) or None, with_kwargs=True)
    enc = tok(["ab"], ["cd"], return_tensors="pt")
    model(**enc)
    handle.remove()
    ids, pos = seen["input_ids"][0], seen["position_ids"][0]
    base = model.peft_prompt.base
    assert ids[0] == tok.bos_token_id and (ids[1:4] >= base).all() and (ids[4:] < base).all()
    pad = tok.pad_token_id
    assert pos[1:4].tolist() == [pad] * 3  # the pad position: no position of their own
    assert pos[[0, *range(4, len(pos))]].tolist() == list(range(pad + 1, pad + 1 + enc["input_ids"].shape[1]))


def test_idspam_preset_is_the_papers_protocol(tmp_results):
    """runner=idspam: AdamW eps 1e-6, betas (0.9, 0.98) (id-spam.txt Appendix A), 30 epochs, dev loss every epoch."""
    cfg = compose("backbone=tiny-roberta", "method=idspam", "task=rte", "runner=idspam", debug=False)
    r = cfg.runner
    assert (r.max_epochs, r.warmup_ratio, r.eval_steps) == (30, 0.06, None)
    model, _ = fresh(cfg)
    opt = make_optimizer(model, r)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    rec = run(compose("backbone=tiny-roberta", "method=idspam", "task=rte", "runner=idspam", "logger=none",
                      f"data_dir={os.path.join(FIX, 'rte')}", "runner.max_epochs=3", "runner.batch_size=2",
                      "runner.micro_batch_size=2", "runner.num_threads=1", "runner.eval_batch_size=8", debug=False))
    per_epoch = rec["split_sizes"]["train"] // 2  # the fixture's train rows, 2 per step
    assert [d["step"] for d in rec["curve"]["dev"]] == [0, per_epoch, 2 * per_epoch, 3 * per_epoch]


def test_hub_encoder_path_from_a_local_folder(tmp_path, tmp_results):
    """backbone=roberta-base through the hub branch (AutoModelForSequenceClassification.from_pretrained),
    with the weights of a tiny encoder saved in a local folder (no network here)."""
    model, tok = load_backbone(compose("backbone=tiny-roberta").backbone, num_labels=2)
    model.save_pretrained(tmp_path / "roberta")
    tok.save_pretrained(tmp_path / "roberta")
    rec = run(compose(*ENC, "backbone=roberta-base", f"backbone.hub_id={tmp_path / 'roberta'}", "method=idspam",
                      "method.layer=2"))
    assert rec["status"] == "ok" and rec["params"]["head"] == HEAD_SIZE


def test_bad_encoder_settings_are_one_line_errors(tmp_results):
    with pytest.raises(UserError, match="task 'gsm8k' has no label set"):
        run(compose("backbone=tiny-roberta", "method=idspam", "task=gsm8k", f"data_dir={os.path.join(FIX, 'gsm8k')}",
                    "runner.max_seq_len=1024"))
    with pytest.raises(UserError, match="answers with its classification head"):
        run(compose(*ENC, "method=idspam", "runner.scoring=likelihood"))
    with pytest.raises(UserError, match="runner.scoring=head needs an encoder backbone"):
        run(compose("method=lora", "task=rte", f"data_dir={os.path.join(FIX, 'rte')}", "runner.scoring=head"))
    with pytest.raises(UserError, match="task 'copa' gives no encoder input"):
        run(compose("backbone=tiny-roberta", "method=idspam", "task=copa", f"data_dir={os.path.join(FIX, 'copa')}"))


def test_run_py_exits_2_for_an_encoder_on_a_generation_task(tmp_path):
    env = dict(os.environ, HARNESS_RESULTS=str(tmp_path / "runs"), CI="true")
    cmd = [sys.executable, "run.py", "backbone=tiny-roberta", "runner=debug", "logger=none", "method=idspam",
           "task=gsm8k", f"data_dir={os.path.join(FIX, 'gsm8k')}", "runner.max_seq_len=1024"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert [ln for ln in out.stderr.splitlines() if ln.startswith("error:")] == [
        "error: backbone 'tiny-roberta' is an encoder and trains a classification head; task 'gsm8k' has no label "
        "set (encoders train on the GLUE tasks, IMDB, BoolQ, CB, MultiRC)"]


@pytest.mark.parametrize("task, folder, metric", [("rte", "RTE", "acc"), ("mrpc", "MRPC", "acc-f1")])
def test_real_rte_and_mrpc_files(task, folder, metric, tmp_results):
    data = shared_data("glue", folder)
    rec = run(compose("backbone=tiny-roberta", "method=idspam", f"task={task}", "runner=idspam", "logger=none",
                      f"data_dir={data}", "runner.max_epochs=1", "runner.batch_size=16", "runner.micro_batch_size=16",
                      "runner.max_train_examples=64", "runner.max_dev_examples=32", "runner.max_test_examples=32",
                      "runner.num_threads=1", "runner.max_seq_len=128", debug=False))
    assert rec["status"] == "ok" and metric in rec["metrics"] and rec["split_sizes"]["test"] == 32
    assert [d["step"] for d in rec["curve"]["dev"]] == [0, 4]
