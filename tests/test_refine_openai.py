"""The OpenAI-compatible refiner against a real HTTP server on 127.0.0.1: answers, a 500, a timeout, concurrency."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from usvl.cli import main
from usvl.text.refine import refine_texts
from usvl.text.refiners import Failure, OpenAIRefiner

SOURCE = "A solid hypoechoic thyroid nodule with punctate echogenic foci."


class StubServer:
    """A chat-completions server that echoes the user message, optionally failing or stalling first."""

    def __init__(self, fail_first: int = 0, delay: float = 0.0, reply: str | None = None) -> None:
        self.fail_first, self.delay, self.reply = fail_first, delay, reply
        self.requests: list[dict] = []
        self.headers: list[str | None] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append(body)
                    stub.headers.append(self.headers.get("Authorization"))
                    failing = len(stub.requests) <= stub.fail_first
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    time.sleep(stub.delay)
                    if failing:
                        self.send_response(500)
                        self.end_headers()
                        self.wfile.write(b"overloaded")
                        return
                    content = stub.reply or body["messages"][-1]["content"]
                    payload = json.dumps({"model": "stub-model-v1",
                                          "choices": [{"message": {"role": "assistant", "content": content}}]})
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(payload.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_answers_carry_the_served_model_and_the_key_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("STUB_KEY", "secret-123")
    with StubServer() as server:
        refiner = OpenAIRefiner(server.url, "asked-model", api_key_env="STUB_KEY", timeout=5, backoff=0.01)
        records, summary = refine_texts([{"text": SOURCE, "id": "n1"}], refiner, "Rewrite.")
    assert server.headers == ["Bearer secret-123"]
    assert server.requests[0]["model"] == "asked-model"
    assert server.requests[0]["messages"] == [{"role": "system", "content": "Rewrite."},
                                              {"role": "user", "content": SOURCE}]
    record = records[0]
    assert record["accepted"] and record["refined"] == SOURCE and record["id"] == "n1"
    assert record["model"]["served"] == ["stub-model-v1"] and record["model"]["id"] == "asked-model"
    assert "secret-123" not in json.dumps(record)
    assert record["settings"]["timeout"] == 5 and summary.accepted == 1


def test_a_missing_key_variable_is_named():
    with pytest.raises(KeyError, match="NO_SUCH_USVL_KEY"):
        OpenAIRefiner("http://127.0.0.1:9/v1", "m", api_key_env="NO_SUCH_USVL_KEY")


def test_a_500_answer_is_retried_with_backoff():
    with StubServer(fail_first=2) as server:
        refiner = OpenAIRefiner(server.url, "m", timeout=5, max_retries=3, backoff=0.05)
        started = time.perf_counter()
        assert refiner.generate([SOURCE], "Rewrite.") == [SOURCE]
    assert len(server.requests) == 3
    assert time.perf_counter() - started >= 0.05 + 0.1  # two waits: backoff, then twice the backoff


def test_a_slow_server_times_out_after_every_retry():
    with StubServer(delay=1.0) as server:
        refiner = OpenAIRefiner(server.url, "m", timeout=0.2, max_retries=1, backoff=0.01, concurrency=2)
        outputs = refiner.generate([SOURCE, "An oval mass."], "Rewrite.")
        assert all(isinstance(out, Failure) and "gave up after 2 tries" in out.message for out in outputs)
        with pytest.raises(RuntimeError, match="failed on all 1 texts"):
            refine_texts([{"text": SOURCE}], refiner)


def test_a_failed_text_keeps_its_source_and_is_listed():
    with StubServer(fail_first=1) as server:
        refiner = OpenAIRefiner(server.url, "m", timeout=5, max_retries=0, concurrency=1)
        records, summary = refine_texts([{"text": SOURCE}, {"text": "An oval mass."}], refiner)
    assert [r["accepted"] for r in records] == [False, True]
    assert records[0]["refined"] == SOURCE and records[0]["reasons"][0].startswith("refiner failed: HTTP 500")
    assert summary.rejected == 1 and summary.rejections[0]["index"] == 0


def test_concurrency_is_limited():
    with StubServer(delay=0.1) as server:
        refiner = OpenAIRefiner(server.url, "m", timeout=5, concurrency=2)
        outputs = refiner.generate([f"Text {i}." for i in range(6)], "Rewrite.")
    assert outputs == [f"Text {i}." for i in range(6)]
    assert server.max_in_flight == 2


def test_cli_refines_through_the_server_and_the_guard_rejects_a_contradiction(tmp_path, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": SOURCE}) + "\n")
    output = tmp_path / "out.jsonl"
    with StubServer(reply="A benign thyroid nodule.") as server:
        code = main(["text", "refine", "--refiner", "openai", "--input", str(texts), "--output", str(output),
                     "--model", "m", "--base-url", server.url, "--retries", "0", "--strict"])
    assert code == 1
    record = json.loads(output.read_text())
    assert record["refined"] == SOURCE and record["candidate"] == "A benign thyroid nodule."
    assert not record["accepted"] and record["reasons"]
    assert "1 rejected" in capsys.readouterr().out
