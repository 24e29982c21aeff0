"""The MT-Bench GPT-4 judge: an OpenAI-compatible chat-completions client with retries, FastChat's
single-answer grading (judge_prompts.jsonl, `[[rating]]`), and the helpers `tasks/instruct.py` uses.

Which protocol iapt.txt Table 3 uses. C.7: "we compare AdaLoRA and IAPT's answers with GPT-4. For each
instruction in MT-Bench, GPT-4 (OpenAI, 2023) is asked to write a review for both answers from the two
methods, and assigns a quantitative score on a scale of 10 to each response. The prompts of instructing
GPT-4 for evaluation is presented in Appendix E." Appendix E: "GPT-4 will receive a query [query], two
responses, [response1] and [response2], from two assistants". So Table 3's "Avg GPT-4 score" is the mean,
per method, of the scores of ONE pairwise Appendix E review of the two methods' answers, not FastChat's
single-answer grade (the paper cites Zheng et al., 2023 only for "GPT-4 as an unbiased reviewer"). Hence:

  task.judge_protocol=appendix-e  (default) the paper's Table 3 protocol: the Appendix E prompt
        (`instruct.JUDGE_PROMPT`), response 1 = this run, response 2 = `task.judge_baseline` (the other
        method's predictions; the paper's setup) or, without one, GPT-4's answer; reports `gpt4-score`,
        `gpt4-score-baseline` (0-10), `judged`, `judge-failures`.
  task.judge_protocol=single      FastChat's MT-Bench single-answer grading (Zheng et al., 2023):
        `single-v1`, or `single-math-v1` with the GPT-4 reference answer
        (reference_answer/gpt-4.jsonl) for the math / reasoning / coding categories (FastChat's
        NEED_REF_CATS); system prompt + user prompt, temperature 0, max_tokens 2048; the rating is the
        first `[[x]]` in the judgement, else the first `[x]`, else -1 (failure), as FastChat parses it;
        reports `gpt4-score` (mean 1-10 rating over the rated answers, FastChat drops the -1s too),
        `judged`, `judge-failures`. Needs no second method, so one run is scored on its own.

Both protocols send the request through `chat_completion` (one attempt) wrapped in `with_retries`.

Endpoint: `<url>/chat/completions` (`url` is the API base such as http://127.0.0.1:8000/v1, or already
the full path), `Authorization: Bearer <key>` only when a key is set, redirects are not followed (so the
key never travels to another host). Retried, with exponential backoff: timeouts, connection errors,
HTTP 5xx, 408 and 429 (the two 4xx codes that mean "try again later"); every other 4xx, a redirect and
a malformed 200 body fail at once. The key is read by the caller from the environment variable named in
the config and is never put into an exception, a log line or a returned dict: every message built here
passes through `redact`, and exceptions are raised `from None` so no chained cause carries the request.

Deviations from FastChat (also listed in docs/tasks.md): only the first turn is graded (the harness generates
first-turn answers only); a parsed rating outside 1-10 counts as a failure (FastChat would average it);
retries default to 5 with 2 s doubling backoff instead of FastChat's 16 x 10 s.
"""

from __future__ import annotations

import ast
import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

from tasks.base import DataError, MissingDataFile

MT_BENCH_SPACE = "lmsys/mt-bench"  # FastChat's files live in this hub Space under data/mt_bench/

log = logging.getLogger(__name__)

JUDGE_PROTOCOLS = ("appendix-e", "single")
JUDGE_PROMPTS_FILE = "judge_prompts.jsonl"
SINGLE_PROMPT, SINGLE_MATH_PROMPT = "single-v1", "single-math-v1"
NEED_REF_CATS = ("math", "reasoning", "coding")  # FastChat's categories graded against a reference answer
MAX_TOKENS = 2048  # FastChat's judge budget
RATING_RANGE = (1.0, 10.0)  # single-v1 asks for "a scale of 1 to 10"
FAILED = -1.0  # FastChat's rating when no score can be parsed
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")  # FastChat's one_score_pattern
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")  # FastChat's one_score_pattern_backup
RETRY_STATUS = (408, 429)  # 4xx codes that are retried, besides every 5xx
BACKOFF_CAP = 60.0  # seconds; the longest wait between two attempts


class JudgeError(RuntimeError):
    """A failed judge request. The message names the endpoint and the cause, never the key."""

    def __init__(self, message: str, retryable: bool, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by ***."""
    return text.replace(secret, "***") if secret else text


def endpoint(url: str) -> str:
    """The chat-completions URL of an API base (or of a URL that already is the full path)."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises the 3xx as an HTTPError


def chat_completion(url: str, model: str, api_key: str | None, prompt: str, timeout: float = 300, *,
                    system: str | None = None, max_tokens: int = MAX_TOKENS) -> str:
    """One chat completion (temperature 0) from an OpenAI-compatible endpoint: the reply's text.

    Raises JudgeError (retryable or not); the key is redacted from everything the error says."""
    where = redact(endpoint(url), api_key)
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}]
    body = json.dumps({"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens, "n": 1})
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    try:
        req = urllib.request.Request(endpoint(url), data=body.encode(), headers=headers, method="POST")
        opener = urllib.request.build_opener(_NoRedirect)  # per call: proxy settings are read from the env now
        with opener.open(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        try:
            detail = e.read().decode("utf-8", "replace").strip()
        except Exception:
            detail = ""
        detail = " ".join(redact(detail, api_key).split())[:200]
        code = e.code
        retry = code >= 500 or code in RETRY_STATUS
        what = "redirect not followed" if 300 <= code < 400 else "HTTP error"
        raise JudgeError(f"{what} {code} from {where}" + (f": {detail}" if detail else ""), retry, code) from None
    except urllib.error.URLError as e:
        reason = e.reason
        kind = "timed out" if isinstance(reason, TimeoutError) else "connection error"
        raise JudgeError(f"{kind} ({type(reason).__name__}: {redact(str(reason), api_key)[:120]}) "
                         f"calling {where} (timeout {timeout:g}s)", True) from None
    except TimeoutError:
        raise JudgeError(f"timed out after {timeout:g}s waiting for {where}", True) from None
    except http.client.InvalidURL as e:
        raise JudgeError(f"bad judge URL {where}: {redact(str(e), api_key)[:120]}", False) from None
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        raise JudgeError(f"connection error ({type(e).__name__}) calling {where}", True) from None
    except ValueError as e:  # a URL urllib cannot use
        raise JudgeError(f"bad judge URL {where}: {redact(str(e), api_key)[:120]}", False) from None
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(type(content).__name__)
    except Exception as e:
        snippet = " ".join(redact(raw.decode("utf-8", "replace"), api_key).split())[:200]
        raise JudgeError(f"malformed chat-completions reply from {where} ({type(e).__name__}): {snippet}",
                         False) from None
    return content


def with_retries(call: Callable[[], str], *, retries: int, backoff: float, what: str = "judge call",
                 secret: str | None = None, sleep: Callable[[float], None] = time.sleep) -> str:
    """`call()`, tried up to 1 + `retries` times while it raises a retryable JudgeError; waits `backoff`
    seconds before the first retry, doubling each time (capped at BACKOFF_CAP). The last error is raised."""
    for attempt in range(retries + 1):
        try:
            return call()
        except JudgeError as err:
            if not err.retryable or attempt == retries:
                raise
            delay = min(backoff * 2 ** attempt, BACKOFF_CAP)
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.2gs", what, attempt + 1, retries + 1,
                        redact(str(err), secret), delay)
            sleep(delay)
    raise AssertionError("unreachable")


# --- FastChat single-answer grading --------------------------------------------------------------
def parse_rating(judgment: str | None) -> float:
    """FastChat's [[rating]] parse: the first `[[x]]`, else the first `[x]`; -1 when neither is there
    or the number is outside the 1-10 scale."""
    match = RATING.search(judgment or "") or RATING_BACKUP.search(judgment or "")
    if not match:
        return FAILED
    rating = float(ast.literal_eval(match.group(1)))
    return rating if RATING_RANGE[0] <= rating <= RATING_RANGE[1] else FAILED


def find_judge_prompts(judge_prompts: str | None, mt_bench_dir: str | None) -> str:
    """Path of FastChat's judge_prompts.jsonl: `judge_prompts` if given; else `<mt_bench_dir>/judge_prompts.jsonl`
    or the folder above it (FastChat's llm_judge/data layout); with no mt_bench_dir, the lmsys/mt-bench Space."""
    if judge_prompts:
        if not os.path.exists(judge_prompts):
            raise MissingDataFile(f"task.judge_prompts='{judge_prompts}' does not exist")
        return judge_prompts
    if mt_bench_dir is not None:
        tried = [os.path.join(mt_bench_dir, JUDGE_PROMPTS_FILE), os.path.join(mt_bench_dir, "..", JUDGE_PROMPTS_FILE)]
        for path in tried:
            if os.path.exists(path):
                return os.path.normpath(path)
        raise MissingDataFile(f"no FastChat {JUDGE_PROMPTS_FILE} in task.mt_bench_dir='{mt_bench_dir}' or the folder "
                              "above it; set task.judge_prompts=<path> (../shared/data/mt_bench has one)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in (f"data/{JUDGE_PROMPTS_FILE}", f"data/mt_bench/{JUDGE_PROMPTS_FILE}"):
        try:
            return hf_hub_download(MT_BENCH_SPACE, name, repo_type="space")
        except EntryNotFoundError:
            continue
    raise MissingDataFile(f"hub Space {MT_BENCH_SPACE} has no {JUDGE_PROMPTS_FILE}; set task.judge_prompts=<path>")


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_judge_prompts(path: str, need: Iterable[str] = (SINGLE_PROMPT, SINGLE_MATH_PROMPT)) -> dict[str, dict]:
    """FastChat judge prompts by name ({name, type, system_prompt, prompt_template, output_format, ...});
    the prompts in `need` must be there, single-answer, with the `[[rating]]` output format."""
    try:
        prompts = {p["name"]: p for p in read_jsonl(path)}
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"judge prompts '{path}' are not FastChat's judge_prompts.jsonl ({type(e).__name__}: {e})") from None
    for name in need:
        p = prompts.get(name)
        if p is None:
            raise DataError(f"judge prompts '{path}' have no '{name}' (found: {', '.join(sorted(prompts)) or 'none'})")
        if p.get("output_format") != "[[rating]]" or "prompt_template" not in p or "system_prompt" not in p:
            raise DataError(f"judge prompt '{name}' in '{path}' is not a single-answer [[rating]] prompt")
    return prompts


def reference_answers(path: str | None) -> dict[int, str]:
    """question_id -> first-turn reference answer from a FastChat reference_answer/<model>.jsonl."""
    if not path or not os.path.exists(path):
        return {}
    return {int(r["question_id"]): r["choices"][0]["turns"][0] for r in read_jsonl(path)}


def single_prompt(prompts: dict[str, dict], question: str, answer: str, category: str,
                  reference: str | None) -> tuple[str, str, str]:
    """(prompt name, system prompt, user prompt) for one first-turn answer, as FastChat picks and fills them:
    single-math-v1 with the reference for NEED_REF_CATS, single-v1 otherwise (or when no reference exists)."""
    name = SINGLE_MATH_PROMPT if category in NEED_REF_CATS and reference else SINGLE_PROMPT
    p = prompts[name]
    user = p["prompt_template"].format(question=question, answer=answer, ref_answer_1=reference or "")
    return name, p["system_prompt"], user


def grade_single(items: list[dict], prompts: dict[str, dict], ask: Callable[[str, str, str], str],
                 secret: str | None = None) -> dict[str, float]:
    """FastChat single-answer grading of `items` ({id, question, answer, category, reference}).

    `ask(system, user, item_id)` returns the judgement or raises; a failed call or an unparseable judgement is a
    failure (rating -1, left out of the mean, as FastChat's show_result drops it)."""
    ratings, failures = [], 0
    no_ref = [it["id"] for it in items if it["category"] in NEED_REF_CATS and not it.get("reference")]
    if no_ref:
        log.warning("MT-Bench judge: no reference answer for %d %s question(s) (%s...); graded with %s",
                    len(no_ref), "/".join(NEED_REF_CATS), ", ".join(no_ref[:3]), SINGLE_PROMPT)
    for it in items:
        name, system, user = single_prompt(prompts, it["question"], it["answer"], it["category"], it.get("reference"))
        try:
            judgment = ask(system, user, it["id"])
        except Exception as err:  # endpoint problems must not lose a finished run
            log.warning("MT-Bench judge call failed for %s: %s", it["id"], redact(str(err), secret))
            failures += 1
            continue
        rating = parse_rating(judgment)
        if rating == FAILED:
            log.warning("MT-Bench judge: no [[rating]] in 1-10 in the judgement of %s (%s): %.120r", it["id"], name,
                        redact(judgment, secret))
            failures += 1
            continue
        log.debug("MT-Bench judge: %s (%s) rated %g", it["id"], name, rating)
        ratings.append(rating)
    log.info("MT-Bench judge (%s): %d answers rated, %d failures", "single", len(ratings), failures)
    if not ratings:
        return {"judged": 0.0, "judge-failures": float(failures)}
    return {"gpt4-score": sum(ratings) / len(ratings), "judged": float(len(ratings)), "judge-failures": float(failures)}
