"""Bulk annotation on Ray Data (a local Ray on this machine's CPUs): the output of predict for JSONL
and Parquet in, malformed records listed with their place, a text over nlp.max_length annotated
whole, a rerun that redoes only the missing outputs, and a worker that dies mid-run."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow
import pyarrow.fs
import pyarrow.parquet
import pytest
from conftest import CODE, make_sentence, pipeline_with_component, run_checked
from spacy.util import load_config

from scripts.project_util import gpu_problem

# A component that kills its worker process on a text with KILL-ME, the first time only (a flag file
# remembers), and a callback that lowers nlp.max_length so that a test record is "long" at 3,000
# characters. Written by the tests into the test model, imported with --code.
TEST_COMPONENTS = """
import os
from spacy.language import Language
from spacy.util import registry


@Language.factory("die_once", default_config={"flag_path": ""})
def make_die_once(nlp, name, flag_path):
    def die_once(doc):
        if "KILL-ME" in doc.text and not os.path.exists(flag_path):
            open(flag_path, "w").close()
            os._exit(1)
        return doc
    return die_once


@registry.callbacks("test.max_length.v1")
def make_max_length(max_length: int):
    def set_max_length(nlp):
        nlp.max_length = max_length
        return nlp
    return set_max_length
"""
LONG_TEXT_CHARS = 3_000


def texts(n: int, seed: int):
    rng = random.Random(seed)
    return [" ".join(word for word, _ in make_sentence(rng)) for _ in range(n)]


@pytest.fixture(scope="module")
def ray_model(project, tmp_path_factory):
    """The release pipeline plus the test components, and its code list."""
    root = tmp_path_factory.mktemp("ray-model")
    flag = {"flag_path": str(root / "died")}
    model = pipeline_with_component(project, root, TEST_COMPONENTS, f'"die_once", config={flag!r}')
    config = load_config(model / "config.cfg", interpolate=False)
    config["nlp"]["after_pipeline_creation"] = {"@callbacks": "test.max_length.v1", "max_length": LONG_TEXT_CHARS}
    config.to_disk(model / "config.cfg", interpolate=False)
    return model, f"{CODE},{root / 'test_components.py'}", root / "died"


def annotate_ray(project, input_path, output_dir, ray_model, *args, check=True):
    model, code, _ = ray_model
    cmd = [
        sys.executable,
        "-m",
        "annotate.annotate_ray",
        str(input_path),
        str(output_dir),
        "--model",
        str(model),
        "--code",
        code,
        "--workers",
        "2",
        *args,
    ]
    if check:
        result = run_checked(cmd, cwd=project)
        # The summary line; Ray may print its own messages (a worker restarted, say) to stdout too.
        return json.loads([line for line in result.stdout.splitlines() if line.startswith('{"files"')][-1])
    return subprocess.run(cmd, cwd=project, capture_output=True, text=True)


def predict_entities(project, source: Path, ray_model, tmp_path):
    """predict's entities for the records of a JSONL file, by id."""
    model, code, _ = ray_model
    output = tmp_path / f"{source.stem}-predicted.jsonl"
    run_checked(
        [
            sys.executable,
            "-m",
            "annotate.predict",
            str(source),
            "--output",
            str(output),
            "--model",
            str(model),
            "--code",
            code,
            "--on-error",
            "skip",
        ],
        cwd=project,
    )
    return {r["id"]: r["entities"] for r in map(json.loads, output.read_text().splitlines())}


def read_output(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return pyarrow.parquet.read_table(path).to_pylist()


def output_files(output_dir: Path):
    return sorted(p for p in output_dir.iterdir() if not p.name.endswith(".malformed.jsonl"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A JSONL file with malformed lines and a long record, and a Parquet file with a null text."""
    root = tmp_path_factory.mktemp("ray-corpus")
    jsonl_texts = texts(30, seed=1)
    long_text = " ".join(texts(120, seed=2))
    assert len(long_text) > 2 * LONG_TEXT_CHARS
    lines = [json.dumps({"id": i, "text": t, "lang": "en"}).encode() for i, t in enumerate(jsonl_texts)]
    lines[5:5] = [b"not json", b'{"id": "no text"}', b'{"id": "bad utf-8", "text": "Caf\xe9"}']
    lines.append(json.dumps({"id": 30, "text": long_text, "lang": "en"}).encode())
    (root / "news.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    parquet_texts = texts(20, seed=3)
    table = pyarrow.table(
        {
            "id": list(range(100, 121)),
            "text": parquet_texts[:7] + [None] + parquet_texts[7:],
            "year": [2000 + i for i in range(21)],
        }
    )
    pyarrow.parquet.write_table(table, root / "archive.parquet")
    records = [{"id": i, "text": t} for i, t in enumerate(jsonl_texts)] + [{"id": 30, "text": long_text}]
    records += [{"id": row["id"], "text": row["text"]} for row in table.to_pylist() if row["text"] is not None]
    return root, records


@pytest.fixture(scope="module")
def first_run(project, ray_model, corpus, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("ray-out")
    summary = annotate_ray(project, corpus[0], output_dir, ray_model)
    return output_dir, summary


def test_same_output_as_predict_for_jsonl_and_parquet(project, ray_model, corpus, first_run, tmp_path):
    root, records = corpus
    output_dir, summary = first_run
    assert summary["files"] == 2 and summary["workers"] == 2
    assert (summary["records"], summary["annotated"], summary["malformed"]) == (55, 51, 4)
    rows = [row for path in output_files(output_dir) for row in read_output(path)]
    assert sorted(row["id"] for row in rows) == sorted(r["id"] for r in records)
    # predict on the same records, file by file, so that the batches are the same too.
    parquet_as_jsonl = tmp_path / "archive.jsonl"
    parquet_as_jsonl.write_text("".join(json.dumps(r) + "\n" for r in records if r["id"] >= 100))
    expected = {
        **predict_entities(project, root / "news.jsonl", ray_model, tmp_path),
        **predict_entities(project, parquet_as_jsonl, ray_model, tmp_path),
    }
    assert {row["id"]: row["entities"] for row in rows} == expected
    assert all(row["lang"] == "en" for row in rows if row["id"] < 100)
    assert all(row["year"] == 2000 + row["id"] - 100 for row in rows if row["id"] >= 100)
    assert all("text" not in row for row in rows)
    # The long record is annotated whole: entities up to its end, offsets into its text.
    long_text = next(r["text"] for r in records if r["id"] == 30)
    long_entities = next(row["entities"] for row in rows if row["id"] == 30)
    assert max(e["start"] for e in long_entities) > len(long_text) - 200
    assert all(long_text[e["start"] : e["end"]] == e["word"] for e in long_entities)


def test_malformed_records_are_listed_with_their_place(first_run, corpus):
    output_dir, _ = first_run
    root = corpus[0]
    listed = [
        json.loads(line)
        for path in sorted(output_dir.glob("*.malformed.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert sorted((m["source"], m.get("line"), m.get("row"), m["problem"]) for m in listed) == sorted(
        [
            (str(root / "news.jsonl"), 6, None, "not valid JSON (Expecting value)"),
            (str(root / "news.jsonl"), 7, None, "no string field 'text'"),
            (str(root / "news.jsonl"), 8, None, "not valid UTF-8 (byte 0xe9 at column 33)"),
            (str(root / "archive.parquet"), None, 8, "no string field 'text'"),
        ]
    )


def test_rerun_redoes_only_the_missing_outputs(project, ray_model, corpus, first_run, tmp_path):
    first_dir, _ = first_run
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    for path in first_dir.iterdir():
        (output_dir / path.name).write_bytes(path.read_bytes())
    kept, removed = output_files(output_dir)
    kept_mtime = kept.stat().st_mtime_ns
    removed.unlink()
    summary = annotate_ray(project, corpus[0], output_dir, ray_model)
    assert (summary["files"], summary["skipped_files"]) == (1, 1)
    assert kept.stat().st_mtime_ns == kept_mtime
    assert read_output(removed) == read_output(first_dir / removed.name)
    rerun = annotate_ray(project, corpus[0], output_dir, ray_model)
    assert (rerun["files"], rerun["skipped_files"]) == (0, 2)


def test_a_worker_killed_mid_run_loses_no_record(project, ray_model, tmp_path):
    _, _, died = ray_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    ids = iter(range(1000))
    expected_ids = []
    for n in range(4):
        batch = [{"id": next(ids), "text": t} for t in texts(40, seed=10 + n)]
        if n == 2:
            batch[30]["text"] += " KILL-ME"  # its worker dies there, the first time
        expected_ids += [r["id"] for r in batch]
        (inputs / f"part-{n}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in batch))
    output_dir = tmp_path / "out"
    summary = annotate_ray(project, inputs, output_dir, ray_model, "--format", "jsonl")
    assert died.exists()  # a worker did die
    assert (summary["files"], summary["records"], summary["annotated"]) == (4, 160, 160)
    ids_out = [row["id"] for path in output_files(output_dir) for row in read_output(path)]
    assert sorted(ids_out) == sorted(expected_ids)
    assert not list(output_dir.glob("*.tmp-*"))


@pytest.mark.skipif(gpu_problem(0) is None, reason="this machine has a usable GPU")
def test_gpu_workers_use_the_device_preflight(project, ray_model, corpus, tmp_path):
    result = annotate_ray(project, corpus[0], tmp_path / "out", ray_model, "--gpus-per-worker", "1", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"Error: Cannot use GPU 0: {gpu_problem(0)}" in result.stderr


class RecordingAnnotator:
    """Stands in for the Annotator: records the resources Ray gave its actor, and how long it held them.
    Its first batch waits (up to a minute) until `actors` actors have each started one, so that actors
    which Ray starts a few seconds apart on a busy machine still work at the same time, if they can."""

    barrier_dir = ""
    actors = 4

    def __init__(self, **_):
        import os

        self.pid = os.getpid()

    def __call__(self, files):
        import os
        import time
        from pathlib import Path

        import ray

        start = time.time()
        barrier = Path(self.barrier_dir)
        (barrier / str(self.pid)).touch()
        while len(list(barrier.iterdir())) < self.actors and time.time() < start + 60:
            time.sleep(0.05)
        time.sleep(0.5)
        context = ray.get_runtime_context()
        return {
            "input": [str(files["input"][0])],
            "pid": [self.pid],
            "start": [start],
            "end": [time.time()],
            "gpu": [context.get_assigned_resources().get("GPU", 0.0)],
            "cuda_visible_devices": [os.environ.get("CUDA_VISIBLE_DEVICES")],
        }


def test_workers_share_a_gpu_by_fractions(tmp_path, monkeypatch):
    """Scheduling only, on the CPU: a local Ray declares one GPU that does not exist, and four actors
    of 0.25 GPU (and 0.5 CPU) each run at the same time on it, each given the fraction asked."""
    import ray.cloudpickle

    from annotate import annotate_ray

    monkeypatch.setattr(RecordingAnnotator, "barrier_dir", str(tmp_path))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import the tests
    pending = [{"input": f"in-{i}.jsonl", "output": f"out-{i}.parquet"} for i in range(8)]
    rows = annotate_ray.run_on_ray(pending, None, 4, 0.5, 0.25, {}, local_gpus=1, annotator=RecordingAnnotator)
    assert sorted(row["input"] for row in rows) == sorted(item["input"] for item in pending)
    assert {row["gpu"] for row in rows} == {0.25}
    assert {row["cuda_visible_devices"] for row in rows} == {"0"}  # all four on the one GPU
    assert len({row["pid"] for row in rows}) == 4
    # How many actors were at work at once, at the moment each started.
    most_at_once = max(sum(other["start"] <= row["start"] < other["end"] for other in rows) for row in rows)
    assert most_at_once == 4


def test_more_gpus_than_the_machine_has_is_a_one_line_error(capsys):
    import typer

    from annotate import annotate_ray

    pending = [{"input": "in.jsonl", "output": "out.parquet"}]
    with pytest.raises(typer.Exit):
        annotate_ray.run_on_ray(pending, None, 4, 0.5, 0.5, {}, local_gpus=1, annotator=RecordingAnnotator)
    error = capsys.readouterr().err
    assert "--workers 4 with --gpus-per-worker 0.5 need 2 GPUs, and this machine has 1" in error
    assert "--gpus-per-worker 0.25" in error


def test_a_lone_surrogate_costs_only_its_record(project, ray_model, tmp_path):
    """A valid JSON escape that is no character (\\udc80) cannot be stored in Parquet: that record is
    listed as malformed and every other is annotated, on the first run and on a rerun; JSONL output
    keeps it, escaped, in valid UTF-8."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "news.jsonl").write_text(
        '{"id": 1, "text": "Bill Gates met Reuters in London ."}\n'
        '{"id": 2, "title": "bad \\udc80", "text": "Angela Merkel visited Ajax ."}\n'
    )
    parquet_out = tmp_path / "parquet-out"
    summary = annotate_ray(project, inputs, parquet_out, ray_model)
    assert (summary["annotated"], summary["malformed"]) == (1, 1)
    assert [row["id"] for row in read_output(output_files(parquet_out)[0])] == [1]
    listed = [json.loads(line) for line in next(parquet_out.glob("*.malformed.jsonl")).read_text().splitlines()]
    assert [(m["line"], "lone surrogate (\\udc80)" in m["problem"]) for m in listed] == [(2, True)]
    assert annotate_ray(project, inputs, parquet_out, ray_model)["skipped_files"] == 1
    jsonl_out = tmp_path / "jsonl-out"
    assert annotate_ray(project, inputs, jsonl_out, ray_model, "--format", "jsonl")["annotated"] == 2
    rows = read_output(output_files(jsonl_out)[0])
    assert [row["id"] for row in rows] == [1, 2] and rows[1]["title"] == "bad \udc80" and rows[1]["entities"]


def test_a_failing_write_leaves_the_earlier_output_and_no_temporary_file(tmp_path, monkeypatch):
    """annotate_ray writes through pyarrow.fs (local here; S3 and the like alike): a write that fails
    half-way keeps the earlier output as it was and removes its temporary file."""
    from annotate import annotate_ray

    fs = pyarrow.fs.LocalFileSystem()
    output = tmp_path / "part-0.parquet"
    output.write_bytes(b"the earlier output")

    def write_half_then_fail(table, stream):
        stream.write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pyarrow.parquet, "write_table", write_half_then_fail)
    rows = [{"id": 1, "entities": [{"entity_group": "PER", "score": 0.9, "word": "Ada", "start": 0, "end": 3}]}]
    with pytest.raises(OSError, match="No space left"):
        annotate_ray.write_output(fs, str(output), rows, "parquet")
    assert output.read_bytes() == b"the earlier output"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["part-0.parquet"]
