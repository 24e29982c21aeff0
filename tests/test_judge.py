"""The MT-Bench judge (tasks/judge.py) against a real OpenAI-compatible server on 127.0.0.1.

The server is a `http.server.ThreadingHTTPServer` on port 0 that answers POST /v1/chat/completions with
OpenAI-shaped JSON, following a script of replies per request: a judgement text, an HTTP error, a
delay past the client's timeout, a redirect or a body that is not JSON. Every request it receives is
recorded (path, Authorization header, JSON body) so the tests can check what the client sent.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from omegaconf import OmegaConf

from tasks import judge as J
from tasks.base import DataError, Example, MissingDataFile
from tasks.registry import TASKS
from tests.conftest import ROOT, shared_data

KEY = "sk-test-Zq81-never-log-me"
FIX_MT = os.path.join(ROOT, "tests", "fixtures", "mt_bench")
FAST = {"retries": 2, "backoff": 0.01}  # retry settings of the tests
TIMEOUT = 0.3


class Server:
    """Script entries: ("ok", text) | ("status", code, body) | ("sleep", seconds, text) | ("raw", bytes) |
    ("redirect", location). An empty script answers ("ok", "Rating: [[5]]")."""

    def __init__(self):
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner.lock:
                    owner.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                           "body": json.loads(body or b"{}")})
                    step = owner.script.pop(0) if owner.script else ("ok", "Rating: [[5]]")
                if self.path != "/v1/chat/completions":
                    return self.reply(404, {"error": {"message": f"no route {self.path}"}})
                kind = step[0]
                if kind == "sleep":
                    time.sleep(step[1])
                    return self.reply(200, completion(step[2]))
                if kind == "status":
                    return self.reply(step[1], step[2])
                if kind == "raw":
                    return self.reply(200, step[1])
                if kind == "redirect":
                    return self.reply(307, {}, {"Location": step[1]})
                return self.reply(200, completion(step[1]))

            def reply(self, code, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(text: str) -> dict:
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "gpt-4",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture
def server(monkeypatch):
    for var in ("NO_PROXY", "no_proxy"):  # a proxy configured on the machine must not see 127.0.0.1
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    s = Server()
    yield s
    s.close()


def ask(server, prompt="Q", system="You are a helpful assistant.", key=KEY, timeout=TIMEOUT, **kw):
    """One retried request, as the task makes it."""
    opts = {**FAST, **kw}
    return J.with_retries(lambda: J.chat_completion(server.url, "gpt-4", key, prompt, timeout, system=system),
                          what="test call", secret=key, **opts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- parsing -------------------------------------------------------------------------------------
def test_parse_rating_follows_fastchat():
    assert J.parse_rating("The answer is fine.\nRating: [[7]]") == 7.0
    assert J.parse_rating("Rating: [[8.5]]") == 8.5
    assert J.parse_rating("Rating: [6]") == 6.0  # the backup pattern
    assert J.parse_rating("see [2] ... Rating: [[9]]") == 9.0  # [[x]] is looked for first
    assert J.parse_rating("Rating: [[3]] then [[4]]") == 3.0  # the first match, as re.search
    assert J.parse_rating("I would give it a seven.") == J.FAILED == -1
    assert J.parse_rating("Rating: [[seven]]") == -1 and J.parse_rating("") == -1 and J.parse_rating(None) == -1
    assert J.parse_rating("Rating: [[11]]") == -1 and J.parse_rating("[[0]]") == -1  # off the 1-10 scale


# --- the client against the server --------------------------------------------------------------
def test_well_formed_reply_and_what_is_sent(server):
    server.script = [("ok", "Short explanation.\n\nRating: [[7]]")]
    text = ask(server, prompt="[Question]\nHi", system="SYS")
    assert J.parse_rating(text) == 7.0
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "gpt-4" and req["body"]["temperature"] == 0
    assert req["body"]["max_tokens"] == 2048
    assert req["body"]["messages"] == [{"role": "system", "content": "SYS"},
                                       {"role": "user", "content": "[Question]\nHi"}]
    ask(server, key=None)  # no key: no Authorization header at all
    assert server.requests[-1]["auth"] is None
    J.chat_completion(server.url + "/chat/completions/", "m", None, "x", TIMEOUT)  # a full path works too
    assert server.requests[-1]["path"] == "/v1/chat/completions"


def test_grading_well_formed_backup_and_malformed_replies(server, caplog):
    server.script = [("ok", "Good.\nRating: [[7]]"), ("ok", "Fine. Rating: [6]"), ("ok", "I cannot decide.")]
    prompts = {n: {"name": n, "system_prompt": "S", "prompt_template": "[Q]{question}[A]{answer}[R]{ref_answer_1}",
                   "output_format": "[[rating]]"} for n in (J.SINGLE_PROMPT, J.SINGLE_MATH_PROMPT)}
    items = [{"id": f"mt-bench-{i}", "question": f"q{i}", "answer": f"a{i}", "category": "writing", "reference": None}
             for i in range(3)]
    with caplog.at_level(logging.DEBUG):
        out = J.grade_single(items, prompts, lambda s, u, _: ask(server, u, s), secret=KEY)
    assert out == {"gpt4-score": 6.5, "judged": 2.0, "judge-failures": 1.0}
    assert "no [[rating]]" in caplog.text and "mt-bench-2" in caplog.text
    assert [r["body"]["messages"][1]["content"] for r in server.requests] == [f"[Q]q{i}[A]a{i}[R]" for i in range(3)]


def test_timeout_then_answer_is_retried(server, caplog):
    server.script = [("sleep", 1.0, "late [[2]]"), ("ok", "Rating: [[8]]")]
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert J.parse_rating(ask(server)) == 8.0
    assert time.monotonic() - start < 0.9  # gave up on the slow reply instead of waiting for it
    assert len(server.requests) == 2 and "timed out" in caplog.text and "retrying" in caplog.text
    assert KEY not in caplog.text


def test_timeouts_exhaust_the_retries(server):
    server.script = [("sleep", 0.6, "[[2]]")] * 2
    with pytest.raises(J.JudgeError, match="timed out") as err:
        ask(server, retries=1)
    assert err.value.retryable and len(server.requests) == 2


def test_5xx_twice_then_ok(server, caplog):
    server.script = [("status", 500, {"error": "boom"}), ("status", 503, {"error": "busy"}), ("ok", "[[9]]")]
    with caplog.at_level(logging.WARNING):
        assert ask(server) == "[[9]]"
    assert len(server.requests) == 3 and "HTTP error 500" in caplog.text and "HTTP error 503" in caplog.text
    server.script = [("status", 502, {"error": "bad gateway"})] * 3
    with pytest.raises(J.JudgeError, match="HTTP error 502") as err:
        ask(server)
    assert err.value.status == 502 and len(server.requests) == 6  # 1 + 2 retries


def test_429_is_retried(server):
    server.script = [("status", 429, {"error": {"message": "rate limit"}}), ("ok", "[[4]]")]
    assert ask(server) == "[[4]]" and len(server.requests) == 2


def test_401_is_not_retried_and_the_key_stays_secret(server, caplog):
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}.", "code": "invalid_api_key"}}
    server.script = [("status", 401, echo), ("ok", "[[9]]")]
    with caplog.at_level(logging.DEBUG), pytest.raises(J.JudgeError) as err:
        ask(server)
    assert len(server.requests) == 1 and server.requests[0]["auth"] == f"Bearer {KEY}"
    assert err.value.status == 401 and not err.value.retryable
    assert "401" in str(err.value) and "Incorrect API key provided: ***" in str(err.value)  # the echo is redacted
    assert KEY not in str(err.value) and KEY not in repr(err.value) and KEY not in caplog.text
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained urllib error


def test_redirect_is_not_followed(server):
    server.script = [("redirect", "http://127.0.0.1:9/elsewhere")]
    with pytest.raises(J.JudgeError, match="redirect not followed 307") as err:
        ask(server)
    assert not err.value.retryable and len(server.requests) == 1


def test_malformed_body_fails_without_retry(server):
    server.script = [("raw", b"<html>gateway says hi</html>"), ("raw", b'{"choices": []}')]
    for _ in range(2):
        with pytest.raises(J.JudgeError, match="malformed chat-completions reply") as err:
            ask(server)
        assert not err.value.retryable
    assert len(server.requests) == 2


def test_connection_refused_is_retried_then_reported(caplog):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with caplog.at_level(logging.WARNING), pytest.raises(J.JudgeError, match="connection error") as err:
        J.with_retries(lambda: J.chat_completion(url, "gpt-4", KEY, "x", TIMEOUT), secret=KEY, **FAST)
    assert err.value.retryable and caplog.text.count("retrying") == 2 and KEY not in caplog.text + str(err.value)


# --- judge prompts -------------------------------------------------------------------------------
def write_prompts(path, names=(J.SINGLE_PROMPT, J.SINGLE_MATH_PROMPT)):
    """A small judge_prompts.jsonl in FastChat's shape (the real one is tested below)."""
    templates = {J.SINGLE_PROMPT: "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
                                  "[The End of Assistant's Answer]",
                 J.SINGLE_MATH_PROMPT: "[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n"
                                       "[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
                                       "[The End of Assistant's Answer]"}
    with open(path, "w") as f:
        for n in names:
            f.write(json.dumps({"name": n, "type": "single", "system_prompt": "You are a helpful assistant.",
                                "prompt_template": templates[n], "output_format": "[[rating]]"}) + "\n")


def test_fastchat_judge_prompts_file():
    path = shared_data("mt_bench", "judge_prompts.jsonl")
    prompts = J.load_judge_prompts(path)
    name, system, user = J.single_prompt(prompts, "What is 2+2?", "5", "math", "4")
    assert name == "single-math-v1" and system == "You are a helpful assistant."
    assert "[The Start of Reference Answer]\n4\n" in user and user.endswith("[The Start of Assistant's Answer]\n5\n"
                                                                             "[The End of Assistant's Answer]")
    name, _, user = J.single_prompt(prompts, "Write a poem {x}.", "roses {}", "writing", None)
    assert name == "single-v1" and "Write a poem {x}." in user and "roses {}" in user and "Reference" not in user
    assert 'following this format: "[[rating]]"' in user
    assert J.single_prompt(prompts, "q", "a", "coding", None)[0] == "single-v1"  # no reference to use
    assert J.find_judge_prompts(None, os.path.dirname(path)) == path


def test_judge_prompts_lookup_and_errors(tmp_path):
    with pytest.raises(MissingDataFile, match="task.judge_prompts"):
        J.find_judge_prompts(None, FIX_MT)
    with pytest.raises(MissingDataFile, match="does not exist"):
        J.find_judge_prompts(str(tmp_path / "nope.jsonl"), FIX_MT)
    (tmp_path / "mt_bench").mkdir()
    write_prompts(tmp_path / "judge_prompts.jsonl", names=(J.SINGLE_PROMPT,))  # FastChat's data/ layout
    found = J.find_judge_prompts(None, str(tmp_path / "mt_bench"))
    assert found == str(tmp_path / "judge_prompts.jsonl")
    with pytest.raises(DataError, match="no 'single-math-v1'"):
        J.load_judge_prompts(found)


# --- end to end through the task's score() --------------------------------------------------------
def mt_bench_folder(tmp_path):
    """Three MT-Bench-like questions (writing, math with a GPT-4 reference, coding with one) + prompts."""
    d = tmp_path / "mt_bench"
    (d / "reference_answer").mkdir(parents=True)
    qs = [(81, "writing", "Write a haiku about tea."), (111, "math", "What is 17 * 3?"),
          (121, "coding", "Reverse a string in Python.")]
    (d / "question.jsonl").write_text("".join(json.dumps({"question_id": q, "category": c, "turns": [t, "More?"]}) + "\n"
                                              for q, c, t in qs))
    refs = {111: "17 * 3 = 51.", 121: "s[::-1]"}
    (d / "reference_answer" / "gpt-4.jsonl").write_text("".join(
        json.dumps({"question_id": q, "model_id": "gpt-4", "choices": [{"index": 0, "turns": [r, "t2"]}]}) + "\n"
        for q, r in refs.items()))
    write_prompts(d / "judge_prompts.jsonl")
    return str(d)


def make_task(name="alpaca", **over):
    entry = TASKS.get(name)
    cfg = OmegaConf.structured(entry.schema)
    for k, v in over.items():
        cfg[k] = v
    return entry.obj(cfg)


def test_score_single_end_to_end(server, tmp_path, monkeypatch, caplog):
    d = mt_bench_folder(tmp_path)
    monkeypatch.setenv("HARNESS_TEST_JUDGE_KEY", KEY)
    monkeypatch.delenv("HARNESS_JUDGE_URL", raising=False)
    task = make_task(mt_bench_dir=d, judge_url=server.url, judge_protocol="single", judge_model="judge-x",
                     judge_api_key_env="HARNESS_TEST_JUDGE_KEY", judge_timeout=TIMEOUT, judge_retries=2,
                     judge_backoff=0.01)
    from tasks.instruct import mt_bench_examples

    test = mt_bench_examples(d)
    assert [e.id for e in test] == ["mt-bench-81", "mt-bench-111", "mt-bench-121"]
    server.script = [("ok", "Lovely.\nRating: [[8]]"), ("status", 500, {"error": "x"}), ("ok", "Correct. [[6]]"),
                     ("ok", f"I refuse to rate this (key {KEY})")]
    with caplog.at_level(logging.DEBUG):
        out = task.score(["Leaves drift...", "51", "print('hi')"], test)
    assert out["gpt4-score"] == 7.0 and out["judged"] == 2.0 and out["judge-failures"] == 1.0
    assert "rouge-l" in out and "gpt4-score-baseline" not in out
    assert len(server.requests) == 4 and {r["auth"] for r in server.requests} == {f"Bearer {KEY}"}
    assert {r["body"]["model"] for r in server.requests} == {"judge-x"}
    users = [r["body"]["messages"][1]["content"] for r in server.requests]
    assert "Reference" not in users[0] and "Write a haiku about tea." in users[0]
    assert users[1] == users[2] and "[The Start of Reference Answer]\n17 * 3 = 51.\n" in users[2]  # the retry
    assert "[The Start of Reference Answer]\ns[::-1]\n" in users[3] and "print('hi')" in users[3]
    assert all(r["body"]["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
               for r in server.requests)
    assert KEY not in json.dumps(out) and KEY not in caplog.text and "***" in caplog.text


def test_score_appendix_e_default_against_the_server(server, tmp_path, monkeypatch):
    d = mt_bench_folder(tmp_path)
    baseline = tmp_path / "adalora.jsonl"
    baseline.write_text("".join(json.dumps({"id": i, "prediction": f"other {i}"}) + "\n"
                                for i in ("mt-bench-81", "mt-bench-111")))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HARNESS_JUDGE_URL", server.url)
    task = make_task(mt_bench_dir=d, judge_baseline=str(baseline), judge_timeout=TIMEOUT, judge_backoff=0.01)
    assert task.cfg.judge_protocol == "appendix-e"  # iapt.txt Table 3's protocol is the default
    from tasks.instruct import mt_bench_examples

    server.script = [("status", 503, {}), ("ok", "Assistant 1: 8/10. Assistant 2: 6/10."), ("ok", "No scores.")]
    out = task.score(["ours 81", "ours 111", "ours 121"], mt_bench_examples(d))
    assert out["gpt4-score"] == 8.0 and out["gpt4-score-baseline"] == 6.0
    assert out["judged"] == 1.0 and out["judge-failures"] == 1.0  # 121 has no baseline answer: not judged
    prompt = server.requests[1]["body"]["messages"]
    assert len(prompt) == 1 and prompt[0]["content"].startswith("Task Introduction\nyou will be given a query")
    assert "Response 1 from assistant 1:\nours 81\nResponse 2 from assistant 2:\nother mt-bench-81" in prompt[0]["content"]


def test_bad_protocol_and_no_mt_bench_examples():
    with pytest.raises(DataError, match="judge_protocol='pairwise'"):
        make_task(judge_protocol="pairwise").judge(["x"], [Example(id="mt-bench-81", query="q", response="r")])
    assert make_task(judge_protocol="pairwise").judge(["x"], [Example(id="a-1", query="q", response="r")]) == {}
