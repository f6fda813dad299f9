"""bench-serve: annotate/serve.py under load, beside (a) offline `nlp.pipe` over the same texts (the
ceiling), (b) the FastAPI app people write, `nlp(text)` per request, (c) the same with the HF
token-classification pipeline (benchmarks/per_request_app.py), and optionally (d) our app as one Ray
Serve replica. Closed-loop load on 127.0.0.1 (CONCURRENCY clients, a fixed number of requests a run, a
time cap), one sentence or one document of the test split a request. The servers run at once, warmed
on every text, and take turns run after run, the lowest concurrency first (a pipeline called from
several threads at once can be left in another state); each figure is the median of the repetitions.
Every answer is checked: status 200, and each entity within its own request's text (`text[start:end]
== word`; offsets only for the HF pipeline's detokenized words); answers that differ from offline
`nlp.pipe`'s (bf16 rounding depends on the batch) are counted apart. Each run records the server's CPU
seconds per request (/proc).
"""

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import aiohttp
import spacy
import typer
from spacy.tokens import DocBin

from annotate.annotation import Entities, doc_entities
from benchmarks.benchmark_speed import machine_info
from scripts.project_util import atomic_write_text, import_code_paths, load_pipeline

app = typer.Typer(add_completion=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its threads so far (and its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(command: List[str], log_path: Path, ready_s: float = 300) -> Iterator[Tuple[str, int]]:
    """A server process on a free port of 127.0.0.1 (COMMAND ends with --port): its URL and pid once
    /ready answers; stopped by its pid at the end (SIGTERM, then SIGKILL to its process group)."""
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen([*command, str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_s
            while not ready(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(command)} did not get ready: {log_path.read_text()[-2000:]}")
                time.sleep(0.5)
            yield url, process.pid
        finally:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process by its pid, then, past 60 s, SIGKILL to its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def ready(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def belongs(entities: Any, text: str, words_are_slices: bool) -> bool:
    """Whether every entity lies in TEXT (and, where WORDS_ARE_SLICES, its word is the text's slice)."""
    return isinstance(entities, list) and all(
        0 <= e["start"] < e["end"] <= len(text) and (not words_are_slices or text[e["start"] : e["end"]] == e["word"])
        for e in entities
    )


def same_entities(got: Entities, expected: Entities) -> bool:
    exact = ("entity_group", "start", "end")
    return [[e[k] for k in exact] for e in got] == [[e[k] for k in exact] for e in expected] and all(
        abs(g["score"] - e["score"]) <= 2e-4 for g, e in zip(got, expected) if e["score"] is not None
    )


async def load(
    url: str, texts: Sequence[str], expected: Optional[List[Entities]], concurrency: int, time_cap_s: float
) -> Dict[str, Any]:
    """Closed-loop load: CONCURRENCY clients send TEXTS, one a request, each once."""
    latencies: List[float] = []
    failed = mixed_up = differs = 0
    next_index = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, failed, mixed_up, differs
        while next_index < len(texts):
            index = next_index
            next_index += 1
            start = time.perf_counter()
            async with session.post(url + "/", json={"inputs": texts[index]}) as response:
                body = await response.json(content_type=None)
                status = response.status
            latencies.append(time.perf_counter() - start)
            if status != 200:
                failed += 1
            elif not belongs(body, texts[index], words_are_slices=expected is not None):
                mixed_up += 1
            elif expected is not None and not same_entities(body, expected[index]):
                differs += 1

    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=time_cap_s)) as session:
        clients = [asyncio.create_task(client(session)) for _ in range(concurrency)]
        done, pending = await asyncio.wait(clients, timeout=time_cap_s)
        for task in pending:
            task.cancel()
        errors = sum(1 for task in done if task.exception() is not None)
    seconds = time.perf_counter() - start
    answered = len(latencies)
    words = sum(len(text.split()) for text in texts[:answered])
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {
        "requests": len(texts),
        "answered": answered,
        "failed": failed + len(texts) - answered,
        "mixed_up": mixed_up,
        "differ_from_offline": differs,
        "client_errors": errors,
        "seconds": round(seconds, 3),
        "words_per_s": round(words / seconds, 1),
        "requests_per_s": round(answered / seconds, 2),
        "p50_ms": round(quantiles[49] * 1000, 2),
        "p95_ms": round(quantiles[94] * 1000, 2),
        "p99_ms": round(quantiles[98] * 1000, 2),
    }


def median_run(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The median of each figure over the repetitions; failures and mix-ups are summed."""
    summed = ("requests", "answered", "failed", "mixed_up", "differ_from_offline", "client_errors")
    result = {key: sum(run[key] for run in runs) for key in summed}
    for key in runs[0]:
        if key not in summed:
            result[key] = round(statistics.median(run[key] for run in runs), 4)
    return result


def spread_sample(items: Sequence[str], count: int) -> List[str]:
    """COUNT items spread evenly over ITEMS (the split's start is not its typical text)."""
    step = max(1, len(items) // count)
    return list(items[::step][:count])


@app.command()
def main(
    model: Path = typer.Argument(..., exists=True, file_okay=False, help="The release pipeline directory"),
    data_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="DocBin whose texts are sent"),
    backbone: str = typer.Argument(..., help="The HF pipeline's backbone (a new head is added), for (c)"),
    output: Path = typer.Option(..., "--output", "-o", help="The results JSON"),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files to import first"),
    concurrency: str = typer.Option("1,8,32,128", "--concurrency", help="Concurrent clients, comma-separated"),
    sentences: int = typer.Option(384, "--sentences", min=1, help="Requests a run, one sentence each"),
    documents: int = typer.Option(96, "--documents", min=1, help="Requests a run, one document each"),
    repetitions: int = typer.Option(3, "--repetitions", min=1, help="Runs of each setting; figures are medians"),
    time_cap_s: float = typer.Option(300.0, "--time-cap", min=1.0, help="Seconds a run may take at most"),
    ray_serve: bool = typer.Option(False, "--ray-serve", help="Also our app as one Ray Serve replica"),
    log_dir: Path = typer.Option(Path("benchmarks/runs/serve-logs"), "--log-dir", help="The servers' logs"),
):
    """Load-test annotate/serve.py beside nlp.pipe and the per-request apps, on 127.0.0.1."""
    import_code_paths(code_paths)
    docs = list(DocBin().from_disk(data_path).get_docs(spacy.blank("en").vocab))
    labels = sorted({ent.label_ for doc in docs for ent in doc.ents})
    texts = {
        "sentence": spread_sample([sent.text for doc in docs for sent in doc.sents], sentences),
        "document": spread_sample([doc.text for doc in docs], documents),
    }
    levels = [int(level) for level in concurrency.split(",")]
    nlp = load_pipeline(str(model))
    offline: Dict[str, Dict[str, Any]] = {}
    expected: Dict[str, List[Entities]] = {}
    for kind, kind_texts in texts.items():
        words = sum(len(text.split()) for text in kind_texts)
        seconds = []
        for _ in range(repetitions):
            start = time.perf_counter()
            annotated = list(nlp.pipe(kind_texts))
            seconds.append(time.perf_counter() - start)
        expected[kind] = [doc_entities(doc) for doc in annotated]
        offline[kind] = {
            "texts": len(kind_texts),
            "words": words,
            "seconds": round(statistics.median(seconds), 3),
            "words_per_s": round(words / statistics.median(seconds), 1),
        }
        typer.echo(f"offline nlp.pipe, {kind}s: {offline[kind]['words_per_s']:,.0f} words/s", err=True)
    del nlp, annotated
    python, code = sys.executable, ["--code", code_paths] if code_paths else []
    commands = {
        "ours": [python, "-m", "annotate.serve", "--model", str(model), *code, "--port"],
        "per_request_spacy": [
            python,
            "-m",
            "benchmarks.per_request_app",
            "--kind",
            "spacy",
            "--model",
            str(model),
            *code,
            "--port",
        ],
        "per_request_hf": [
            python,
            "-m",
            "benchmarks.per_request_app",
            "--kind",
            "hf",
            "--model",
            backbone,
            "--labels",
            ",".join(labels),
            "--port",
        ],
    }
    if ray_serve:
        commands["ours_ray_serve"] = [
            python,
            "-m",
            "annotate.serve",
            "--model",
            str(model),
            *code,
            "--replicas",
            "1",
            "--cpus-per-replica",
            "1",
            "--port",
        ]
    runs: Dict[str, Dict[str, Dict[int, List[Dict[str, Any]]]]] = {
        name: {kind: {level: [] for level in levels} for kind in texts} for name in commands
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(server(command, log_dir / f"{name}.log")) for name, command in commands.items()
        }
        # Warm-up one request at a time (the kernels for the texts' shapes), and the levels in order, the
        # lowest first: concurrent calls of a pipeline from threads (the per-request app) can leave it in
        # another state (in bf16, the weights of one call swapped in while another runs).
        for name, (url, _) in servers.items():
            for kind_texts in texts.values():
                asyncio.run(load(url, kind_texts, None, 1, time_cap_s))
        for level in sorted(levels):
            for repetition in range(repetitions):
                for kind, kind_texts in texts.items():
                    for name, (url, pid) in servers.items():
                        checked = None if name == "per_request_hf" else expected[kind]
                        cpu_before = cpu_seconds(pid)
                        run = asyncio.run(load(url, kind_texts, checked, level, time_cap_s))
                        run["server_cpu_ms_per_request"] = round(
                            (cpu_seconds(pid) - cpu_before) * 1000 / max(run["answered"], 1), 3
                        )
                        runs[name][kind][level].append(run)
                        typer.echo(
                            f"[{repetition + 1}/{repetitions}] {name:18} {kind:8} c={level:<3} "
                            f"{run['words_per_s']:>8,.0f} words/s p50 {run['p50_ms']:>8.1f} ms "
                            f"failed {run['failed']} mixed up {run['mixed_up']} "
                            f"differ from offline {run['differ_from_offline']}",
                            err=True,
                        )
    results = {
        name: {
            kind: {str(level): median_run(level_runs) for level, level_runs in by_level.items()}
            for kind, by_level in by_kind.items()
        }
        for name, by_kind in runs.items()
    }
    summary = targets(results, offline, levels)
    report = {
        "command": " ".join(sys.argv),
        "machine": machine_info(),
        "offline_nlp_pipe": offline,
        "servers": results,
        "targets": summary,
        "runs": {
            name: {
                kind: {str(level): level_runs for level, level_runs in by_level.items()}
                for kind, by_level in by_kind.items()
            }
            for name, by_kind in runs.items()
        },
    }
    atomic_write_text(output, json.dumps(report, indent=2) + "\n")
    typer.echo(json.dumps(summary, indent=2))


def targets(results: Dict[str, Any], offline: Dict[str, Any], levels: List[int]) -> Dict[str, Any]:
    """The issue's targets: at concurrency 32, one sentence a request, ours against offline nlp.pipe and
    against the per-request app; at concurrency 1, ours' p50 latency against the per-request app's."""
    ours, theirs = results["ours"]["sentence"], results["per_request_spacy"]["sentence"]
    summary: Dict[str, Any] = {}
    if 32 in levels:
        summary["c32_sentence_ours_vs_offline"] = round(
            ours["32"]["words_per_s"] / offline["sentence"]["words_per_s"], 3
        )
        summary["c32_sentence_ours_vs_per_request"] = round(ours["32"]["words_per_s"] / theirs["32"]["words_per_s"], 3)
    if 1 in levels:
        summary["c1_sentence_p50_ours_vs_per_request"] = round(ours["1"]["p50_ms"] / theirs["1"]["p50_ms"], 3)
    summary["failed"] = sum(
        r["failed"] for by_kind in results.values() for by_level in by_kind.values() for r in by_level.values()
    )
    summary["mixed_up"] = sum(
        r["mixed_up"] for by_kind in results.values() for by_level in by_kind.values() for r in by_level.values()
    )
    return summary


if __name__ == "__main__":
    app()
