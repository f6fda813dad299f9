"""annotate/serve.py over real HTTP on 127.0.0.1: each server is a process of its own on a free port,
sent a bounded number of requests with a time cap, and stopped by its id."""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest
from conftest import CODE, find_chromium, make_sentence, pipeline_with_component, run_checked

from annotate.annotation import doc_entities
from annotate.serve import Batcher, Overloaded
from benchmarks.benchmark_serve import free_port, stop

# Texts with SLOW take 0.1 s in the pipeline, those with STALL 6 s; a text with boom fails.
TEST_COMPONENTS = """
import time
from spacy.language import Language

@Language.component("slow_or_fail")
def slow_or_fail(doc):
    if "boom" in doc.text:
        raise RuntimeError("cannot handle boom")
    if "STALL" in doc.text:
        time.sleep(6)
    elif "SLOW" in doc.text:
        time.sleep(0.1)
    return doc
"""
REQUEST_CAP_S = 60


@pytest.fixture(scope="module")
def serve_model(project, tmp_path_factory) -> Tuple[Path, str]:
    """The release pipeline with the slow_or_fail component, and the --code that loads it."""
    root = tmp_path_factory.mktemp("serve-model")
    model = pipeline_with_component(project, root, TEST_COMPONENTS, '"slow_or_fail", first=True')
    return model, f"{CODE},{root / 'test_components.py'}"


def call(
    url: str, path: str = "/", body: Any = None, raw: Optional[bytes] = None, timeout: float = REQUEST_CAP_S
) -> Tuple[int, Any, dict]:
    """(status, decoded JSON or text, headers) of a GET, or of a POST of BODY as JSON (or RAW bytes)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, headers, content = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        status, headers, content = err.code, dict(err.headers), err.read()
    text = content.decode("utf-8")
    return status, json.loads(text) if headers.get("content-type") == "application/json" else text, headers


@contextmanager
def running_server(
    project: Path, model: Path, code: str, *options: str, ready_s: float = 120
) -> Iterator[Tuple[str, subprocess.Popen]]:
    """The server's URL and process, once it is ready; SIGTERM (then SIGKILL to its process group) at the end."""
    port = free_port()
    log = (project / f"serve-{port}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "annotate.serve", "--model", str(model), "--code", code, "--port", str(port), *options],
        cwd=project,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            assert process.poll() is None, (project / f"serve-{port}.log").read_text()[-3000:]
            try:
                if call(url, "/ready", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.5)
        yield url, process
    finally:
        stop(process)
        log.close()


LIMITS = (
    "--max-text-chars",
    "2000",
    "--max-body-bytes",
    "60000",
    "--max-texts",
    "8",
    "--timeout",
    "4",
    "--batch-wait-ms",
    "200",
)


@pytest.fixture(scope="module")
def server(project, serve_model) -> Iterator[str]:
    """A server with small limits: texts of 2,000 characters, bodies of 60,000 bytes, 8 texts a request,
    4 s a request."""
    with running_server(project, *serve_model, *LIMITS) as (url, _):
        yield url


def different_texts(count: int) -> List[str]:
    rng = random.Random(7)
    texts = set()
    while len(texts) < count:
        texts.add(" ".join(word for word, _ in make_sentence(rng)) + f" Number {len(texts)} .")
    return sorted(texts)


def assert_same_entities(got: List[dict], expected: List[dict]) -> None:
    """The same entities; the scores may differ in the last digit (batched, the padding differs)."""
    exact = ("entity_group", "word", "start", "end")
    assert [{k: e[k] for k in exact} for e in got] == [{k: e[k] for k in exact} for e in expected]
    assert [e["score"] for e in got] == pytest.approx([e["score"] for e in expected], abs=2e-4)


def test_concurrent_requests_each_get_their_own_texts_entities(server, nlp):
    texts = different_texts(200)
    before = call(server, "/health")[1]
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda text: call(server, body={"inputs": text}), texts))
    after = call(server, "/health")[1]
    assert [status for status, _, _ in responses] == [200] * len(texts)
    for text, (_, entities, _) in zip(texts, responses):
        assert_same_entities(entities, doc_entities(nlp(text)))
        assert all(text[e["start"] : e["end"]] == e["word"] for e in entities)
    assert any(entities for _, entities, _ in responses)
    # Annotated together: fewer nlp.pipe batches than texts.
    assert after["texts"] - before["texts"] == len(texts)
    assert after["batches"] - before["batches"] < len(texts)


def test_a_lone_request_goes_at_once_and_company_joins_a_batch():
    """A batch may wait an hour for company: a request alone in the queue must not wait at all; queued
    requests go together, up to the batch's size."""

    async def batches():
        batcher = Batcher(nlp=None, max_batch_texts=3, wait_s=3600, max_queue_texts=10)
        batcher.submit(["alone"])
        alone = await asyncio.wait_for(batcher.next_batch(), 10)
        for texts in (["a"], ["b", "c"], ["d"]):
            batcher.submit(texts)
        together = await asyncio.wait_for(batcher.next_batch(), 10)
        batcher.wait_s = 0.05
        rest = await asyncio.wait_for(batcher.next_batch(), 10)
        for texts in (["e", "f"], ["g", "h"], ["i"] * 5):  # the second would overflow a batch of 3
            batcher.submit(texts)
        overflowing = [await asyncio.wait_for(batcher.next_batch(), 10) for _ in range(3)]
        return [[pending.texts for pending in batch] for batch in (alone, together, rest, *overflowing)]

    assert asyncio.run(batches()) == [
        [["alone"]],
        [["a"], ["b", "c"]],
        [["d"]],
        [["e", "f"]],
        [["g", "h"]],
        [["i"] * 5],
    ]


def test_a_full_queue_refuses_and_one_request_never_waits_on_itself():
    async def queue():
        batcher = Batcher(nlp=None, max_batch_texts=4, wait_s=0, max_queue_texts=3)
        batcher.submit(["a", "b"])
        with pytest.raises(Overloaded):
            batcher.submit(["c", "d"])
        await batcher.next_batch()
        batcher.submit(["e"] * 5)  # more than the queue holds, into an empty queue: taken
        return batcher.queued_texts

    assert asyncio.run(queue()) == 5


def test_a_list_of_texts_gets_a_list_per_text_and_min_score_filters(server, nlp):
    # Eight texts, the most a request takes here: entities enough that the tiny model scores them unequally.
    texts = ["Bill Gates met Angela Merkel in London .", "", "Ajax fans .", *different_texts(5)]
    status, lists, _ = call(server, body={"inputs": texts, "parameters": {}})
    assert status == 200 and len(lists) == 8 and lists[1] == []
    for text, entities in zip(texts, lists):
        assert_same_entities(entities, doc_entities(nlp(text)))
    scores = sorted({e["score"] for entities in lists for e in entities})
    threshold = scores[len(scores) // 2]
    status, filtered, _ = call(server, body={"inputs": texts, "parameters": {"min_score": threshold}})
    assert filtered == [[e for e in entities if e["score"] >= threshold] for entities in lists]
    assert sum(map(len, filtered)) < sum(map(len, lists))
    status, without_per, _ = call(server, body={"inputs": texts[0], "parameters": {"ignore_labels": ["PER"]}})
    assert without_per == [e for e in lists[0] if e["entity_group"] != "PER"]


def test_huggingface_inference_client_gets_our_entities(server, project):
    text = "Bill Gates met Angela Merkel in London ."
    expected = call(server, body={"inputs": text})[1]
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}  # offline blocks loopback too
    result = run_checked(
        [
            sys.executable,
            "-c",
            """
import json, sys
from huggingface_hub import InferenceClient
elements = InferenceClient(model=sys.argv[1]).token_classification(sys.argv[2])
print(json.dumps([{k: e[k] for k in ("entity_group", "score", "word", "start", "end")} for e in elements]))
""",
            server,
            text,
        ],
        cwd=project,
        env=env,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
    assert expected


BAD_REQUESTS = [
    # (what, body or raw bytes, status, words the one-line error holds)
    ("malformed JSON", b'{"inputs": ', 422, "not valid JSON"),
    ("not UTF-8", b'{"inputs": "\xff"}', 422, "not UTF-8"),
    ("a number as inputs", {"inputs": 5}, 422, "inputs: must be a string or a list of strings"),
    ("a number in the list", {"inputs": ["a", 3]}, 422, "inputs.1:"),
    ("no inputs", {"parameters": {}}, 422, "inputs: Field required"),
    ("a body that is a list", [1, 2], 422, "body:"),
    ("min_score above 1", {"inputs": "a", "parameters": {"min_score": 2}}, 422, "parameters.min_score:"),
    ("an unknown parameter", {"inputs": "a", "parameters": {"top_k": 2}}, 422, "parameters.top_k:"),
    (
        "another aggregation",
        {"inputs": "a", "parameters": {"aggregation_strategy": "first"}},
        422,
        "parameters.aggregation_strategy:",
    ),
    ("a lone surrogate", b'{"inputs": "Bill \\udc80 Gates"}', 422, "lone surrogate"),
    ("a text over the limit", {"inputs": "word " * 500}, 413, "inputs: 2,500 characters"),
    ("a listed text over the limit", {"inputs": ["a", "word " * 500]}, 413, "inputs.1: 2,500 characters"),
    ("too many texts", {"inputs": ["a"] * 9}, 413, "inputs: 9 texts"),
    ("a body over the limit", {"inputs": "word " * 13_000}, 413, "over 60,000 bytes"),
    ("a text that fails", {"inputs": "a boom here"}, 500, "RuntimeError: cannot handle boom"),
]


@pytest.mark.parametrize("what,body,status,message", BAD_REQUESTS, ids=[row[0] for row in BAD_REQUESTS])
def test_bad_input_gets_one_line_and_the_server_goes_on(server, what, body, status, message):
    raw = body if isinstance(body, bytes) else None
    got, answer, _ = call(server, body=None if raw else body, raw=raw)
    assert got == status, answer
    assert message in answer["error"] and "\n" not in answer["error"], answer
    status, entities, _ = call(server, body={"inputs": "Bill Gates met Reuters ."})
    assert status == 200 and entities
    assert call(server, body={"inputs": ""})[:2] == (200, [])


def test_a_failing_text_costs_only_its_own_request(server):
    texts = [f"Bill Gates met Reuters on day {i} ." for i in range(6)] + ["SLOW boom"]
    with ThreadPoolExecutor(len(texts)) as pool:
        responses = list(pool.map(lambda text: call(server, body={"inputs": text}), texts))
    assert [status for status, _, _ in responses] == [200] * 6 + [500]
    assert all(entities[0]["word"] == "Bill Gates" for _, entities, _ in responses[:6])


def test_overload_gets_503_with_retry_after_and_health_answers(project, serve_model):
    """Twelve texts may wait; of 40 concurrent slow requests the ones past them are refused at once."""
    with running_server(project, *serve_model, "--max-queue-texts", "12") as (url, _):
        with ThreadPoolExecutor(40) as pool:
            flood = [pool.submit(call, url, "/", {"inputs": f"SLOW text {i}"}) for i in range(40)]
            time.sleep(0.3)
            health = call(url, "/health", timeout=10)
            responses = [future.result(timeout=REQUEST_CAP_S) for future in flood]
        statuses = [status for status, _, _ in responses]
        assert health[0] == 200
        assert set(statuses) == {200, 503} and statuses.count(200) >= 12, statuses
        refused = next(response for response in responses if response[0] == 503)
        assert refused[2]["retry-after"].isdigit() and "overloaded" in refused[1]["error"]
        assert call(url, body={"inputs": "Bill Gates met Reuters ."})[0] == 200


def test_a_request_over_the_timeout_gets_504_and_the_server_goes_on(server):
    status, answer, _ = call(server, body={"inputs": "STALL here"})
    assert status == 504 and "over 4 s" in answer["error"]
    assert call(server, body={"inputs": "Bill Gates met Reuters ."})[0] == 200


def test_info_docs_and_ready(server):
    status, info, _ = call(server, "/info")
    assert status == 200 and sorted(info["labels"]) == ["LOC", "MISC", "ORG", "PER"]
    assert info["confidences"] is True and info["backbone"] and "version" in info
    docs = call(server, "/openapi.json")[1]
    assert {"/", "/health", "/ready", "/info", "/render"} <= set(docs["paths"])
    assert call(server, "/docs")[0] == 200


def test_sigterm_answers_the_requests_in_flight_then_exits(project, serve_model):
    with running_server(project, *serve_model) as (url, process):
        pid = call(url, "/health")[1]["pid"]
        assert pid == process.pid
        with ThreadPoolExecutor(10) as pool:
            in_flight = [pool.submit(call, url, "/", {"inputs": f"SLOW Bill Gates {i} ."}) for i in range(10)]
            time.sleep(0.3)
            os.kill(pid, signal.SIGTERM)
            responses = [future.result(timeout=REQUEST_CAP_S) for future in in_flight]
        assert [status for status, _, _ in responses] == [200] * 10
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        with pytest.raises(OSError):
            call(url, "/health", timeout=5)


class DevTools:
    """A page in headless Chromium, driven over the DevTools protocol: used as a person uses it."""

    def __init__(self, socket):
        self.socket = socket
        self.next_id = 0

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.2)
        return value


@contextmanager
def chromium_page(tmp_path: Path) -> Iterator[DevTools]:
    from websockets.sync.client import connect

    process = subprocess.Popen(
        [
            find_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            "--no-first-run",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = tmp_path / "chrome" / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and process.poll() is None, "Chromium did not start"
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(target for target in json.load(response) if target["type"] == "page")
        with connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20) as socket:
            yield DevTools(socket)
    finally:
        process.kill()
        process.wait()


def test_the_page_shows_the_entities_the_api_returns(server, tmp_path):
    text = "Bill Gates met Angela Merkel in London ."
    expected = call(server, body={"inputs": text})[1]
    page = call(server, "/")[1]
    assert "<textarea" in page and "http://" not in page and "https://" not in page  # every asset is the server's
    with chromium_page(tmp_path) as browser:
        browser.send("Page.navigate", url=server + "/")
        browser.wait_for("document.readyState === 'complete' && !!document.getElementById('text')")
        browser.evaluate("document.getElementById('text').focus()")
        browser.send("Input.insertText", text=text)  # typed, as a keyboard types
        box = browser.evaluate(
            "(() => { const r = document.getElementById('annotate').getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for event in ("mousePressed", "mouseReleased"):
            browser.send("Input.dispatchMouseEvent", type=event, x=box[0], y=box[1], button="left", clickCount=1)
        rows = browser.wait_for(
            "(() => { const rows = [...document.querySelectorAll('#entities tr.entity-row')];"
            " return rows.length && rows.map(r => [...r.cells].map(c => c.textContent)); })()"
        )
        marks = browser.evaluate("[...document.querySelectorAll('#rendered mark.entity')].map(m => m.innerText)")
    assert rows == [
        [e["entity_group"], e["word"], f"{e['score']:.4f}", str(e["start"]), str(e["end"])] for e in expected
    ]
    assert len(marks) == len(expected)
    for mark, entity in zip(marks, expected):
        assert entity["word"] in mark and entity["entity_group"] in mark and f"{entity['score']:.2f}" in mark


def test_ray_serve_replaces_a_killed_replica_and_the_other_one_serves(project, serve_model):
    with running_server(project, *serve_model, "--replicas", "2", "--cpus-per-replica", "0.5", ready_s=240) as (url, _):
        deadline = time.monotonic() + 120
        pids = set()
        while len(pids) < 2:
            assert time.monotonic() < deadline, f"requests reached {len(pids)} replica(s)"
            pids.add(call(url, "/health")[1]["pid"])
        killed = pids.pop()
        os.kill(killed, signal.SIGKILL)
        answers = [call(url, body={"inputs": f"Bill Gates met Reuters on day {i} ."}) for i in range(20)]
        assert [status for status, _, _ in answers] == [200] * 20
        assert all(entities[0]["word"] == "Bill Gates" for _, entities, _ in answers)
        new_pids = set()
        while not new_pids - pids - {killed}:
            assert time.monotonic() < deadline + 120, "the killed replica was not replaced"
            status, health, _ = call(url, "/health")
            if status == 200:
                new_pids.add(health["pid"])
            time.sleep(0.1)
