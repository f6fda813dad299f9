"""Issue 23: no input destroyed, no run lost to one bad record, every bad argument a one-line error.
After each failure the input files and earlier outputs are byte for byte as they were."""

import json
import re
import subprocess
import sys

import pytest
from conftest import CODE


def run(project, script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=project, capture_output=True, text=True)


def predict(project, *args):
    return run(project, "-m", "annotate.predict", *args)


def one_line_error(result, *fragments):
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def jsonl(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": 1, "text": "Bill Gates met Reuters in London ."}\n'
        '{"id": 2, "title": "bad \\udc80", "text": "Angela Merkel visited Microsoft ."}\n'
        '{"id": 3, "text": "x \\ud800 y"}\n'
        '{"id": 4, "text": "Steffi Graf joined Ajax .", "entities": ["theirs"]}\n'
    )
    previous = tmp_path / "prev.jsonl"
    previous.write_text("the previous output\n")
    return source, previous


def test_a_lone_surrogate_costs_at_most_its_own_record(project, jsonl, tmp_path):
    source, _ = jsonl
    output = tmp_path / "out.jsonl"
    result = predict(
        project, str(source), "--model", "training/model-release", "--output", str(output), "--on-error", "skip"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{source}:3: field 'text' holds a lone surrogate (\\ud800)" in result.stderr
    raw = output.read_bytes()
    raw.decode("utf-8")  # valid UTF-8
    records = [json.loads(line) for line in raw.decode().splitlines()]
    assert [r["id"] for r in records] == [1, 2, 4]
    assert records[1]["title"] == "bad \udc80" and records[1]["entities"]  # kept, as a \u escape
    assert "'entities' field is replaced" in result.stderr
    stdout = predict(project, str(source), "--model", "training/model-release", "--on-error", "skip")
    assert [json.loads(line)["id"] for line in stdout.stdout.splitlines()] == [1, 2, 4]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--batch-size", "0", "--batch-size"),
        ("--batch-size", "-1", "--batch-size"),
        ("--n-process", "0", "--n-process"),
        ("--min-score", "5", "--min-score"),
        ("--min-score", "nan", "--min-score"),
    ],
)
def test_bad_numbers_are_refused_before_any_work(project, jsonl, option, value, message):
    source, previous = jsonl
    before = previous.read_bytes()
    result = predict(
        project, str(source), "--model", "training/model-release", "--output", str(previous), option, value
    )
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert previous.read_bytes() == before


def test_output_on_the_input_is_refused(project, jsonl, tmp_path):
    source, _ = jsonl
    before = source.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    for output in (source, link):
        one_line_error(
            predict(project, str(source), "--model", "training/model-release", "--output", str(output)),
            "is also the output",
            "Fix:",
        )
    assert source.read_bytes() == before


def test_unwritable_outputs_stop_before_the_first_record(project, jsonl, tmp_path):
    source, previous = jsonl
    (tmp_path / "a-directory").mkdir()
    cases = [
        ("--output", str(tmp_path / "a-directory"), "is a directory"),
        ("--output", str(previous / "x.jsonl"), "cannot write there"),
        ("--html", "/proc/conll-test.html", "cannot write there"),
    ]
    for option, path, message in cases:
        one_line_error(
            predict(project, str(source), "--model", "training/model-release", option, path), option, message
        )
    one_line_error(
        run(
            project,
            "-m",
            "scripts.evaluate",
            "training/model-release",
            "corpus/test.spacy",
            "--output",
            "/proc/conll-test.json",
            "--code",
            CODE,
        ),
        "--output",
        "cannot write there",
    )
    one_line_error(run(project, "-m", "scripts.convert", str(previous), "--conll-dir", "no-such-dir"), "is a file")
    assert previous.read_text() == "the previous output\n"


def test_an_unreadable_file_is_a_bad_record(project, tmp_path):
    inputs = tmp_path / "texts"
    inputs.mkdir()
    (inputs / "a.txt").write_text("\ufeffBill Gates met Reuters .", encoding="utf-8")  # with a byte-order mark
    (inputs / "b.txt").symlink_to("/proc/self/mem")  # a regular file whose read fails
    (inputs / "c.TXT").write_text("Angela Merkel visited London .")
    output = tmp_path / "out.jsonl"
    result = predict(
        project, str(inputs), "--model", "training/model-release", "--output", str(output), "--on-error", "skip"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{inputs / 'b.txt'}: cannot read" in result.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["source"] for r in records] == [str(inputs / "a.txt"), str(inputs / "c.TXT")]
    assert all(e["start"] >= 0 and "\ufeff" not in e["word"] for e in records[0]["entities"])
    assert records[0]["entities"] and records[0]["entities"][0]["start"] == 0  # the BOM is not part of the text


def test_model_errors_are_one_line(project, jsonl, tmp_path):
    source, _ = jsonl
    one_line_error(predict(project, str(source), "--model", "no-such-model"), "--model no-such-model", "Fix:")
    # A pipeline directory without --code: the project's packaged code is found.
    result = predict(project, str(source), "--model", "training/model-release", "--on-error", "skip")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr[-2000:]
    one_line_error(
        predict(project, str(source), "--model", "training/model-best", "--min-score", "0.5"), "no entity_confidence"
    )


def test_evaluate_names_a_bad_corpus_file(project, tmp_path):
    import spacy
    from spacy.tokens import DocBin

    (tmp_path / "empty.spacy").write_bytes(b"")
    (tmp_path / "random.spacy").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "truncated.spacy").write_bytes((project / "corpus/test.spacy").read_bytes()[:500])
    DocBin().to_disk(tmp_path / "nodocs.spacy")
    no_ents = DocBin()
    no_ents.add(spacy.blank("en")("Hello world"))
    no_ents.to_disk(tmp_path / "noents.spacy")
    output = tmp_path / "test.json"
    for name, message in (
        ("empty", "not a readable DocBin"),
        ("random", "not a readable DocBin"),
        ("truncated", "not a readable DocBin"),
        ("nodocs", "holds no documents"),
        ("noents", "no entity annotation"),
    ):
        one_line_error(
            run(
                project,
                "-m",
                "scripts.evaluate",
                "training/model-release",
                str(tmp_path / f"{name}.spacy"),
                "--output",
                str(output),
                "--code",
                CODE,
            ),
            f"{name}.spacy",
            message,
        )
    assert not output.exists()


def test_convert_writes_all_splits_or_none(project, conll_dir, tmp_path, monkeypatch):
    from scripts import convert

    output = tmp_path / "corpus"
    output.mkdir()
    for split in ("train", "dev", "test"):
        (output / f"{split}.spacy").write_bytes(b"earlier " + split.encode())
    real_to_bytes = convert.DocBin.to_bytes
    calls = []

    def fail_on_the_third(self):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_to_bytes(self)

    monkeypatch.setattr(convert.DocBin, "to_bytes", fail_on_the_third)
    with pytest.raises(OSError):
        convert.convert(output, conll_dir, n_sents=2)
    assert sorted(p.name for p in output.iterdir()) == ["dev.spacy", "test.spacy", "train.spacy"]  # no temp left
    for split in ("train", "dev", "test"):
        assert (output / f"{split}.spacy").read_bytes() == b"earlier " + split.encode()
    monkeypatch.undo()
    convert.convert(output, conll_dir, n_sents=2)
    assert all((output / f"{split}.spacy").read_bytes()[:7] != b"earlier" for split in ("train", "dev", "test"))
    result = run(
        project, "-m", "scripts.convert", str(tmp_path / "c2"), "--conll-dir", str(conll_dir), "--n-sents", "0"
    )
    assert result.returncode == 2 and "--n-sents" in result.stderr


def test_sigterm_removes_the_temporary_output(project, tmp_path):
    import signal
    import time

    source = tmp_path / "many.jsonl"
    source.write_text(
        "".join(json.dumps({"id": i, "text": "Bill Gates met Reuters in London ."}) + "\n" for i in range(20000))
    )
    output = tmp_path / "out.jsonl"
    output.write_text("earlier\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "annotate.predict",
            str(source),
            "--model",
            "training/model-release",
            "--output",
            str(output),
        ],
        cwd=project,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    # Until records have reached the temporary output: the stop then counts at least one.
    while not any(p.stat().st_size for p in tmp_path.glob(".out.jsonl.*.tmp")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "Interrupted after" in stderr and "as it was before the run" in stderr
    assert int(re.search(r"Interrupted after (\d+) annotated", stderr).group(1)) > 0, stderr[-2000:]
    assert output.read_text() == "earlier\n" and not list(tmp_path.glob(".out.jsonl.*"))
