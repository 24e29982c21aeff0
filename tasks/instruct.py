"""Instruction tuning: Alpaca-cleaned (iapt.txt C.6) and UltraChat (para.txt Table 3), tested on the 80
MT-Bench questions; MMLU (para.txt Table 3), zero-shot after UltraChat training.

  alpaca     hub `yahma/alpaca-cleaned` or data_dir/alpaca_data_cleaned.json; 1,000 rows held out as dev;
             test = MT-Bench's 80 first-turn questions.
  ultrachat  hub `HuggingFaceH4/ultrachat_200k` (train_sft) or data_dir/train_sft.jsonl; first user turn ->
             first assistant turn; 1% held out as dev (para.txt A: 99:1); test = MT-Bench.
  mmlu       hub `cais/mmlu` (all) or the original data/{val,test}/*.csv; train/dev come from `task.source`
             (ultrachat by default, the paper's protocol; `mmlu` = no training data, dev = MMLU validation).

MT-Bench comes from the FastChat files (question.jsonl, model_answer/gpt-4.jsonl,
reference_answer/gpt-4.jsonl): `task.mt_bench_dir=` for a local copy, else the `lmsys/mt-bench` Space on
the hub. Scoring: ROUGE-L against GPT-4's answers where present (iapt.txt C.7), plus the GPT-4 judge
when an OpenAI-compatible endpoint is configured (HARNESS_JUDGE_URL or task.judge_url); otherwise the
judge is skipped with a message. `task.judge_protocol=appendix-e` (default: the pairwise Appendix E review
that iapt.txt Table 3 reports) or `single` (FastChat's single-answer `[[rating]]` grading); the client,
retries, key handling and the protocol decision are in tasks/judge.py.

    python run.py task=alpaca task.mt_bench_dir=../shared/data/mt_bench
    HARNESS_JUDGE_URL=https://api.openai.com/v1 OPENAI_API_KEY=... python -m runners.score task=alpaca predictions=p.jsonl
    ... python -m runners.score task=alpaca task.judge_protocol=single task.mt_bench_dir=../shared/data/mt_bench predictions=p.jsonl
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from dataclasses import dataclass

from tasks import judge as judge_lib
from tasks.base import DataError, Example, MissingDataFile, TaskConfig, local_file
from tasks.common import BenchTask, check_splits, load_hub, load_local, transfer_splits
from tasks.metrics import rouge_l
from tasks.registry import register_task

log = logging.getLogger(__name__)

MT_BENCH_SPACE = judge_lib.MT_BENCH_SPACE
MT_BENCH_FILES = {  # key -> path relative to an MT-Bench folder; answers earlier in the list win
    "questions": "question.jsonl",
    "gpt4_answers": "model_answer/gpt-4.jsonl",
    "gpt4_references": "reference_answer/gpt-4.jsonl",
}
MT_BENCH_PREFIX = "mt-bench-"

# iapt.txt Appendix E, verbatim (line breaks reconstructed from the two-column PDF layout).
JUDGE_PROMPT = (
    "Task Introduction\n"
    "you will be given a query, and two responses from two assistants,\n"
    "could you compare the two responses,\n"
    "and do the following:\n"
    "(1) write a concise review for each assistant's response, on how well the response answers the query, "
    "and whether it will be helpful to humans users, and any issues in the response;\n"
    "(2) assigns a quantitative score on a scale of 10 to each response, reflecting your assessment of the "
    "two responses\n"
    "Query:\n{query}\n"
    "Response 1 from assistant 1:\n{response1}\n"
    "Response 2 from assistant 2:\n{response2}"
)


# --- MT-Bench ------------------------------------------------------------------------------------
def mt_bench_files(mt_bench_dir: str | None) -> dict[str, str]:
    """Paths of the FastChat MT-Bench files: local ones, or downloaded from the lmsys/mt-bench Space."""
    if mt_bench_dir is not None:
        local_file(mt_bench_dir, MT_BENCH_FILES["questions"])
        return {k: os.path.join(mt_bench_dir, f) for k, f in MT_BENCH_FILES.items()
                if os.path.exists(os.path.join(mt_bench_dir, f))}
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    paths = {}
    for key, name in MT_BENCH_FILES.items():
        try:
            paths[key] = hf_hub_download(MT_BENCH_SPACE, f"data/mt_bench/{name}", repo_type="space")
        except EntryNotFoundError:
            if key == "questions":
                raise
    return paths


def load_mt_bench(mt_bench_dir: str | None) -> list[dict]:
    """The 80 questions as rows {question_id, category, query (first turn), reference (GPT-4 answer or '')}."""
    files = mt_bench_files(mt_bench_dir)
    answers: dict[int, str] = {}
    for key in ("gpt4_answers", "gpt4_references"):
        if key in files:
            for r in load_local("json", {"train": files[key]})["train"]:
                answers.setdefault(int(r["question_id"]), r["choices"][0]["turns"][0])
    questions = load_local("json", {"train": files["questions"]})["train"]
    return [{"question_id": int(q["question_id"]), "category": q.get("category", ""), "query": q["turns"][0],
             "reference": answers.get(int(q["question_id"]), "")} for q in questions]


def mt_bench_examples(mt_bench_dir: str | None) -> list[Example]:
    return [Example(id=f"{MT_BENCH_PREFIX}{r['question_id']}", query=r["query"], response=r["reference"],
                    references=[r["reference"]]) for r in load_mt_bench(mt_bench_dir)]


def parse_judge_scores(review: str) -> tuple[float, float] | None:
    """The two 0-10 scores in a GPT-4 review ('Assistant 1: 8/10 ... Assistant 2: 6/10'), or None."""
    found = re.findall(r"(\d+(?:\.\d+)?)\s*(?:/\s*10\b|out of 10\b)", review or "")
    if len(found) < 2:
        found = re.findall(r"[Ss]core\D{0,30}?(\d+(?:\.\d+)?)", review or "")
    scores = [float(x) for x in found[:2]]
    return (scores[0], scores[1]) if len(scores) == 2 and all(0 <= s <= 10 for s in scores) else None


def call_judge(url: str, model: str, api_key: str | None, prompt: str, timeout: float = 300, *,
               system: str | None = None) -> str:
    """One chat completion (temperature 0, max_tokens 2048) from an OpenAI-compatible endpoint (`url` is the
    API base or the full path); raises judge_lib.JudgeError, whose message never holds the key."""
    return judge_lib.chat_completion(url, model, api_key, prompt, timeout, system=system)


@dataclass
class MtBenchConfig(TaskConfig):
    """Fields of tasks tested on MT-Bench."""

    max_new_tokens: int = 512  # MT-Bench answers are long
    # local FastChat MT-Bench folder (question.jsonl, reference_answer/gpt-4.jsonl);
    # null = hub Space lmsys/mt-bench
    mt_bench_dir: str | None = None
    # API base (OpenAI-compatible) of the GPT-4 judge; null = $HARNESS_JUDGE_URL, unset = no judge
    judge_url: str | None = None
    judge_model: str = "gpt-4"  # judge model name sent to the endpoint
    # environment variable holding the endpoint's key (sent as a Bearer token; never logged or recorded)
    judge_api_key_env: str = "OPENAI_API_KEY"
    # appendix-e = iapt.txt Table 3's pairwise Appendix E review (two 0-10 scores per question) |
    # single = FastChat's single-answer grading (single-v1 / single-math-v1, a 1-10 [[rating]])
    judge_protocol: str = "appendix-e"
    # appendix-e: jsonl (id, prediction) of the other assistant (the paper: the compared method); null = GPT-4's answer
    judge_baseline: str | None = None
    # single: FastChat judge_prompts.jsonl; null = <mt_bench_dir>/judge_prompts.jsonl (or the folder above it;
    # the lmsys/mt-bench Space when mt_bench_dir is null)
    judge_prompts: str | None = None
    judge_timeout: float = 300.0  # seconds a judge request may wait for the endpoint before it is retried
    # extra attempts after a timeout, connection error, HTTP 5xx/408/429 (other 4xx are not retried)
    judge_retries: int = 5
    judge_backoff: float = 2.0  # seconds before the first retry, doubling per retry (at most 60 s)


class MtBenchScoring:
    """score(): ROUGE-L on examples with a reference; the GPT-4 judge on MT-Bench examples if configured."""

    def score(self, predictions, examples):
        assert len(predictions) == len(examples), f"{len(predictions)} predictions vs {len(examples)} examples"
        pairs = [(p, e) for p, e in zip(predictions, examples) if any(e.references)]
        out = rouge_l([p for p, _ in pairs], [e.references for _, e in pairs])
        out.update(self.judge(predictions, examples))
        return out

    def judge(self, predictions, examples) -> dict[str, float]:
        """`task.judge_protocol` on the MT-Bench examples: appendix-e (default) or single (tasks/judge.py)."""
        mt = [(p, e) for p, e in zip(predictions, examples) if e.id.startswith(MT_BENCH_PREFIX)]
        url = getattr(self.cfg, "judge_url", None) or os.environ.get("HARNESS_JUDGE_URL")
        if not mt:
            return {}
        protocol = getattr(self.cfg, "judge_protocol", "appendix-e")
        if protocol not in judge_lib.JUDGE_PROTOCOLS:
            raise DataError(f"task.judge_protocol='{protocol}' is not one of {', '.join(judge_lib.JUDGE_PROTOCOLS)}")
        if not url:
            log.warning("MT-Bench GPT-4 judge skipped: set HARNESS_JUDGE_URL (an OpenAI-compatible endpoint) "
                        "or task.judge_url= to enable it; only ROUGE-L is reported")
            return {}
        key = os.environ.get(self.cfg.judge_api_key_env) or None
        cfg = self.cfg

        def ask(prompt: str, system: str | None = None, what: str = "judge call") -> str:
            extra = {"system": system} if system is not None else {}
            return judge_lib.with_retries(
                lambda: call_judge(url, cfg.judge_model, key, prompt, timeout=cfg.judge_timeout, **extra),
                retries=cfg.judge_retries, backoff=cfg.judge_backoff, what=what, secret=key)

        if protocol == "single":
            return self.judge_single(mt, ask, key)
        return self.judge_appendix_e(mt, ask, key)

    def judge_single(self, mt, ask, key) -> dict[str, float]:
        """FastChat single-answer grading of the first-turn answers (tasks/judge.py)."""
        prompts = judge_lib.load_judge_prompts(judge_lib.find_judge_prompts(self.cfg.judge_prompts,
                                                                            self.cfg.mt_bench_dir))
        files = mt_bench_files(self.cfg.mt_bench_dir)
        categories = {int(q["question_id"]): q.get("category", "")
                      for q in judge_lib.read_jsonl(files["questions"])}
        refs = judge_lib.reference_answers(files.get("gpt4_references"))
        items = []
        for pred, e in mt:
            qid = int(e.id[len(MT_BENCH_PREFIX):])
            items.append({"id": e.id, "question": e.query, "answer": pred, "category": categories.get(qid, ""),
                          "reference": refs.get(qid)})
        return judge_lib.grade_single(
            items, prompts, lambda system, user, qid: ask(user, system, f"MT-Bench judge call for {qid}"), secret=key)

    def judge_appendix_e(self, mt, ask, key) -> dict[str, float]:
        """iapt.txt Appendix E: one review of (this run, other assistant) per question, two 0-10 scores."""
        baseline = {}
        if self.cfg.judge_baseline:
            if not os.path.exists(self.cfg.judge_baseline):
                raise MissingDataFile(f"task.judge_baseline='{self.cfg.judge_baseline}' does not exist")
            with open(self.cfg.judge_baseline, encoding="utf-8") as f:
                baseline = {str(r["id"]): r["prediction"] for r in map(json.loads, filter(str.strip, f))}
        ours, theirs, failures = [], [], 0
        for pred, e in mt:
            other = baseline.get(e.id) if baseline else e.references[0]
            if not other:
                continue  # no second response to compare with
            prompt = JUDGE_PROMPT.format(query=e.query, response1=pred, response2=other)
            try:
                scores = parse_judge_scores(ask(prompt, what=f"MT-Bench judge call for {e.id}"))
            except Exception as err:  # network/endpoint problems must not lose a finished run
                log.warning("judge call failed for %s: %s", e.id, judge_lib.redact(str(err), key))
                scores = None
            if scores is None:
                failures += 1
                continue
            ours.append(scores[0])
            theirs.append(scores[1])
        log.info("MT-Bench judge (appendix-e): %d questions reviewed, %d failures", len(ours), failures)
        if not ours:
            return {"judged": 0.0, "judge-failures": float(failures)}
        return {"gpt4-score": sum(ours) / len(ours), "gpt4-score-baseline": sum(theirs) / len(theirs),
                "judged": float(len(ours)), "judge-failures": float(failures)}


def held_out(examples: list[Example], n: int, seed: int) -> tuple[list[Example], list[Example]]:
    """(rest, held-out) with `n` random examples held out, both in original order."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


# --- Alpaca --------------------------------------------------------------------------------------
@dataclass
class AlpacaConfig(MtBenchConfig):
    name: str = "alpaca"
    dev_size: int = 1000  # rows held out as dev (iapt.txt C.6)


@register_task("alpaca", AlpacaConfig)
class Alpaca(MtBenchScoring, BenchTask):
    hub_id = "yahma/alpaca-cleaned"

    def load_raw(self, data_dir):
        if data_dir is None:
            return load_hub(self.hub_id, None, ("train",))
        return load_local("json", {"train": local_file(data_dir, "alpaca_data_cleaned.json")})

    def to_example(self, row, idx):
        query = row["instruction"] + (f"\n{row['input']}" if (row.get("input") or "").strip() else "")
        return Example(id=f"alpaca-{idx}", query=query, response=row["output"])

    def train_dev(self, data_dir=None):
        rows = [self.to_example(r, i) for i, r in enumerate(self.load_raw(data_dir)["train"])]
        train, dev = held_out(rows, self.cfg.dev_size, self.cfg.split_seed)
        self.split_rule = f"task.dev_size={self.cfg.dev_size} of the {len(rows)} instructions are held out as dev"
        return {"train": train, "dev": dev}

    def splits(self, data_dir=None):
        out = {**self.train_dev(data_dir), "test": mt_bench_examples(self.cfg.mt_bench_dir)}
        return check_splits(self.cfg.name, out, self.split_rule)


# --- UltraChat -----------------------------------------------------------------------------------
@dataclass
class UltrachatConfig(MtBenchConfig):
    name: str = "ultrachat"
    dev_fraction: float = 0.01  # share of conversations held out as dev (para.txt A: 99:1)


@register_task("ultrachat", UltrachatConfig)
class Ultrachat(MtBenchScoring, BenchTask):
    hub_id = "HuggingFaceH4/ultrachat_200k"

    def load_raw(self, data_dir):
        if data_dir is None:
            return {"train": load_hub(self.hub_id, None, ("train_sft",))["train_sft"]}
        return load_local("json", {"train": local_file(data_dir, "train_sft.jsonl")})

    def to_example(self, row, idx):
        """First user turn -> first assistant turn (ultrachat_200k `messages`, or UltraChat's `data` list)."""
        if row.get("messages"):
            user = next(m["content"] for m in row["messages"] if m["role"] == "user")
            answer = next((m["content"] for m in row["messages"] if m["role"] == "assistant"), "")
        else:
            user, answer = row["data"][0], (row["data"][1] if len(row["data"]) > 1 else "")
        return Example(id=str(row.get("prompt_id") or row.get("id") or idx), query=user, response=answer)

    def train_dev(self, data_dir=None):
        every = [self.to_example(r, i) for i, r in enumerate(self.load_raw(data_dir)["train"])]
        rows = [e for e in every if e.response.strip()]
        if not 0 <= self.cfg.dev_fraction < 1:
            raise DataError(f"task.dev_fraction={self.cfg.dev_fraction} must be in [0, 1)")
        train, dev = held_out(rows, round(len(rows) * self.cfg.dev_fraction), self.cfg.split_seed)
        self.split_rule = (f"{len(rows)} of the {len(every)} conversations have an assistant answer; "
                           f"task.dev_fraction={self.cfg.dev_fraction} of them (rounded) are held out as dev")
        return {"train": train, "dev": dev}

    def splits(self, data_dir=None):
        out = {**self.train_dev(data_dir), "test": mt_bench_examples(self.cfg.mt_bench_dir)}
        return check_splits(self.cfg.name, out, self.split_rule)


# --- MMLU ----------------------------------------------------------------------------------------
MMLU_COLUMNS = ["question", "A", "B", "C", "D", "answer"]  # original CSVs have no header


@dataclass
class MmluConfig(TaskConfig):
    name: str = "mmlu"
    max_new_tokens: int = 4  # one letter
    # training data: ultrachat (para.txt protocol) | mmlu (no training data, zero-shot; dev = MMLU validation)
    source: str | None = "ultrachat"
    source_data_dir: str | None = None  # local folder of the source task's files (when data_dir is set)


@register_task("mmlu", MmluConfig)
class Mmlu(BenchTask):
    """MMLU, zero-shot: the question and its four options; the response is the letter A-D."""

    hub_id = "cais/mmlu"
    labels = ["A", "B", "C", "D"]
    transfer_sources = ("ultrachat",)

    def load_raw(self, data_dir):
        if data_dir is None:
            raw = load_hub(self.hub_id, "all", ("validation", "test"))
            return {s: [{"question": r["question"], **dict(zip("ABCD", r["choices"])), "answer": "ABCD"[r["answer"]],
                         "subject": r.get("subject", "")} for r in rows] for s, rows in raw.items()}
        for sub in ("val", "test"):
            if not os.path.isdir(os.path.join(data_dir, sub)):
                local_file(data_dir, sub)  # raises, naming the missing folder
        files = {"validation": os.path.join(data_dir, "val", "*.csv"), "test": os.path.join(data_dir, "test", "*.csv")}
        return load_local("csv", files, column_names=MMLU_COLUMNS, header=None, keep_default_na=False)

    def to_example(self, row, idx):
        query = f"{row['question']}\n" + "".join(f"{k}. {row[k]}\n" for k in "ABCD") + "Answer:"
        answer = str(row["answer"]).strip()
        return Example(id=str(idx), query=query, response=answer, label=answer)

    def own_splits(self, data_dir):
        raw = self.load_raw(data_dir)
        dev = [self.to_example(r, f"val-{i}") for i, r in enumerate(raw["validation"])]
        test = [self.to_example(r, f"test-{i}") for i, r in enumerate(raw["test"])]
        return {"train": [], "dev": dev, "test": test}

    def splits(self, data_dir=None):
        if (self.cfg.source or "mmlu") == "mmlu":
            return self.own_splits(data_dir)
        return transfer_splits(self, data_dir, self.own_splits)

    def score(self, predictions, examples):
        assert len(predictions) == len(examples), f"{len(predictions)} predictions vs {len(examples)} examples"
        if not predictions:
            return {"acc": 0.0}
        hits = 0
        for p, e in zip(predictions, examples):
            m = re.match(r"\W*\(?([ABCD])\b", (p or "").strip())
            hits += bool(m) and m.group(1) == e.references[0].strip().upper()
        return {"acc": 100.0 * hits / len(predictions)}
