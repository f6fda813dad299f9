"""The predict CLI and the release pipeline on real-world input: offsets, JSONL in and out,
bulk against single, long documents, odd text, malformed lines, and the displaCy page."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CODE, make_sentence, rendered_dom, run_checked
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def predict(project: Path, *args: str, input_text=None, check=True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "annotate.predict", *args, "--model", "training/model-release", "--code", CODE]
    if check:
        return run_checked(cmd, cwd=project, input_text=input_text)
    return subprocess.run(cmd, cwd=project, capture_output=True, text=True, input=input_text)


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def sample_texts(n: int, seed: int = 3):
    rng = random.Random(seed)
    return [" ".join(word for word, _ in make_sentence(rng)) for _ in range(n)]


def assert_entities_match_text(text: str, entities):
    for ent in entities:
        assert set(ent) == {"entity_group", "score", "word", "start", "end"}
        assert text[ent["start"] : ent["end"]] == ent["word"]
        assert ent["entity_group"] in {"PER", "ORG", "LOC", "MISC"}
        assert 0.0 <= ent["score"] <= 1.0


def test_text_option_gives_reference_fields_and_offsets(project):
    text = "Bill Gates visited Microsoft in Seattle on Monday ."
    record = json.loads(predict(project, "--text", text).stdout)
    assert_entities_match_text(text, record["entities"])
    assert ("PER", "Bill Gates") in [(e["entity_group"], e["word"]) for e in record["entities"]]


def test_jsonl_in_and_out_keeps_metadata(project, tmp_path):
    texts = sample_texts(5)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t, "lang": "en"}) + "\n" for i, t in enumerate(texts)))
    output = tmp_path / "out.jsonl"
    predict(project, str(source), "--output", str(output))
    records = read_jsonl(output)
    assert [(r["id"], r["lang"]) for r in records] == [(i, "en") for i in range(5)]
    for record, text in zip(records, texts):
        assert "text" not in record
        assert_entities_match_text(text, record["entities"])
        assert record["entities"]


def test_stdin_text_file_and_directory(project, tmp_path):
    texts = sample_texts(3)
    stdin_records = [
        json.loads(line)
        for line in predict(
            project, "-", input_text="".join(json.dumps({"text": t}) + "\n" for t in texts)
        ).stdout.splitlines()
    ]
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(texts):
        (docs / f"{i}.txt").write_text(text, encoding="utf-8")
    dir_records = [json.loads(line) for line in predict(project, str(docs)).stdout.splitlines()]
    file_record = json.loads(predict(project, str(docs / "1.txt")).stdout)
    assert [r["source"] for r in dir_records] == [str(docs / f"{i}.txt") for i in range(3)]
    assert [r["entities"] for r in dir_records] == [r["entities"] for r in stdin_records]
    assert file_record["entities"] == dir_records[1]["entities"]


def test_bulk_and_one_by_one_give_the_same_output(project, tmp_path):
    texts = sample_texts(12, seed=5) + ["", "Reuters"]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    bulk = [json.loads(line) for line in predict(project, str(source), "--batch-size", "8").stdout.splitlines()]
    single = [json.loads(line) for line in predict(project, str(source), "--batch-size", "1").stdout.splitlines()]
    assert len(bulk) == len(single) == len(texts)
    for b, s in zip(bulk, single):
        assert [(e["entity_group"], e["start"], e["end"]) for e in b["entities"]] == [
            (e["entity_group"], e["start"], e["end"]) for e in s["entities"]
        ]
        assert [e["score"] for e in b["entities"]] == pytest.approx([e["score"] for e in s["entities"]], abs=1e-3)


def test_n_process_gives_the_same_output(project, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(sample_texts(8))))
    one = predict(project, str(source)).stdout.splitlines()
    two = predict(project, str(source), "--n-process", "2", "--batch-size", "2").stdout.splitlines()
    assert [json.loads(line)["id"] for line in two] == list(range(8))
    assert [json.loads(line)["entities"] for line in one] == [json.loads(line)["entities"] for line in two]


def test_min_score_filters(project):
    text = " ".join(sample_texts(4))
    everything = json.loads(predict(project, "--text", text).stdout)["entities"]
    scores = [e["score"] for e in everything]
    assert min(scores) < max(scores)
    threshold = (min(scores) + max(scores)) / 2
    kept = json.loads(predict(project, "--text", text, "--min-score", str(threshold)).stdout)["entities"]
    assert kept == [e for e in everything if e["score"] >= threshold]
    assert 0 < len(kept) < len(everything)


def test_malformed_jsonl_skip_reports_line_numbers(project, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": 1, "text": "Bill Gates met Reuters ."}\nnot json\n[1, 2]\n{"id": 4}\n'
        '{"id": 5, "text": "Angela Merkel visited London ."}\n'
    )
    output = tmp_path / "out.jsonl"
    result = predict(project, str(source), "--output", str(output), "--on-error", "skip")
    assert f"{source}:2: not valid JSON" in result.stderr
    assert f"{source}:3: expected a JSON object" in result.stderr
    assert f"{source}:4: no string field 'text'" in result.stderr
    assert [r["id"] for r in read_jsonl(output)] == [1, 5]


def test_malformed_jsonl_stop_keeps_what_was_done(project, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": 1, "text": "Bill Gates met Reuters ."}\n{"id": 2, "text": "Ajax won ."}\n'
        '{broken\n{"id": 4, "text": "Angela Merkel visited London ."}\n'
    )
    output = tmp_path / "out.jsonl"
    output.write_text("earlier results\n")
    result = predict(project, str(source), "--output", str(output), check=False)
    assert result.returncode == 1
    assert f"{source}:3: not valid JSON" in result.stderr
    assert [r["id"] for r in read_jsonl(output)] == [1, 2]
    assert not list(tmp_path.glob(".out.jsonl.*"))


def test_failed_run_leaves_an_earlier_output_untouched(project, tmp_path):
    output = tmp_path / "out.jsonl"
    output.write_text("earlier results\n")
    result = predict(project, str(tmp_path / "missing.jsonl"), "--output", str(output), check=False)
    assert result.returncode == 1 and "no such file or directory" in result.stderr
    assert output.read_text() == "earlier results\n"


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def test_long_document_is_annotated_to_the_end(nlp):
    sentence_texts = sample_texts(4300, seed=11)
    text = " ".join(sentence_texts)
    assert len(text.split()) >= 50_000
    doc = nlp(text)
    tail_start = len(text) - len(" ".join(sentence_texts[-50:]))
    tail_ents = [e for e in doc.ents if e.start_char >= tail_start]
    # The tail's 50 sentences hold 200 gold entities; the model must find most of them.
    assert len(tail_ents) > 150
    assert all(e._.confidence is not None for e in tail_ents)


def test_memory_does_not_grow_with_the_stream(nlp):
    texts = sample_texts(200, seed=13)

    def stream(n_rounds):
        for _ in range(n_rounds):
            yield from texts

    for doc in nlp.pipe(stream(2), batch_size=32):
        pass
    after_warmup = rss_mb()
    for doc in nlp.pipe(stream(10), batch_size=32):
        pass
    assert rss_mb() - after_warmup < 100


ODD_TEXTS = [
    "",
    " ",
    "\n\n\t ",
    "🙂🙂 Bill Gates 🚀",
    "東京で Angela Merkel が会った",
    "مرحبا Reuters بالعالم",
    "Bill\x00Gates\x07 met\x1b[31m Reuters",
    "x" * 5000,
    "Ajax " + "a" * 3000 + " London",
    "\u200b\u200e\ufeff",
    "London" * 400,
]


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_odd_input_is_handled(nlp, text):
    doc = nlp(text)
    assert doc.text == text
    for ent in doc.ents:
        assert text[ent.start_char : ent.end_char] == ent.text
        assert 0.0 <= ent._.confidence <= 1.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(st.text(max_size=40), st.sampled_from(ODD_TEXTS + ["Bill Gates", "Microsoft"])),
        min_size=1,
        max_size=6,
    )
)
def test_fuzzed_input_never_crashes(nlp, pieces):
    text = " ".join(pieces)
    doc = nlp(text)
    assert doc.text == text
    for ent in doc.ents:
        assert text[ent.start_char : ent.end_char] == ent.text
        assert 0.0 <= ent._.confidence <= 1.0


def test_displacy_pages_render_entity_labels(project, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "Bill Gates visited Microsoft in Seattle on Monday ."}) + "\n")
    html = tmp_path / "out.html"
    records = predict(project, str(source), "--html", str(html)).stdout.splitlines()
    labels = {e["entity_group"] for e in json.loads(records[0])["entities"]}
    assert "PER" in labels
    dom = rendered_dom(html, tmp_path)
    assert "<mark" in dom
    for label in labels:
        assert f">{label}</span>" in dom
    sample_dom = rendered_dom(project / "metrics" / "test_sample.html", tmp_path)
    assert "<mark" in sample_dom and ">PER</span>" in sample_dom


def test_invalid_utf8_line_is_reported_and_skipped(project, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b'{"id": 1, "text": "Bill Gates met Reuters ."}\n{"id": 2, "text": "Caf\xe9 in London"}\n'
        b'{"id": 3, "text": "Angela Merkel visited London ."}\n'
    )
    output = tmp_path / "out.jsonl"
    result = predict(project, str(source), "--output", str(output), "--on-error", "skip")
    assert f"Skipped: {source}:2: not valid UTF-8 (byte 0xe9 at column 23)" in result.stderr
    assert [r["id"] for r in read_jsonl(output)] == [1, 3]


def test_invalid_utf8_line_stops_and_keeps_the_earlier_records(project, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(
        b'{"id": 1, "text": "Bill Gates met Reuters ."}\n{"id": 2, "text": "\xff\xfe"}\n'
        b'{"id": 3, "text": "Angela Merkel visited London ."}\n'
    )
    output = tmp_path / "out.jsonl"
    result = predict(project, str(source), "--output", str(output), check=False)
    assert result.returncode == 1
    assert f"Error: {source}:2: not valid UTF-8 (byte 0xff at column 20)" in result.stderr
    assert [r["id"] for r in read_jsonl(output)] == [1]


def test_a_record_that_cannot_be_annotated_costs_only_itself(project, tmp_path):
    """A component that fails on one text (whatever the cause): that record is reported with its
    line, the others of its batch and after it are annotated."""
    failing = tmp_path / "failing.py"
    failing.write_text("""
from spacy.language import Language

@Language.component("fail_on_boom")
def fail_on_boom(doc):
    if "boom" in doc.text:
        raise RuntimeError("cannot handle boom")
    return doc
""")
    model = tmp_path / "model"
    run_checked(
        [
            sys.executable,
            "-c",
            f"""
import sys; sys.path.append({str(tmp_path)!r})
import failing
from scripts.project_util import load_pipeline  # imports the packaged code the pipeline names
nlp = load_pipeline("training/model-release")
nlp.add_pipe("fail_on_boom")
nlp.to_disk({str(model)!r})
""",
        ],
        cwd=project,
    )
    texts = ["Bill Gates met Reuters .", "a boom here", "Angela Merkel visited London .", "Ajax won in Brazil ."]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts, start=1)))
    for on_error, ids, returncode in (("skip", [1, 3, 4], 0), ("stop", [1], 1)):
        output = tmp_path / f"out-{on_error}.jsonl"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "annotate.predict",
                str(source),
                "--model",
                str(model),
                "--output",
                str(output),
                "--code",
                f"{CODE},{failing}",
                "--on-error",
                on_error,
            ],
            cwd=project,
            capture_output=True,
            text=True,
        )
        assert result.returncode == returncode, result.stderr[-3000:]
        assert f"{source}:2: cannot annotate (RuntimeError: cannot handle boom)" in result.stderr
        assert [r["id"] for r in read_jsonl(output)] == ids
    assert read_jsonl(tmp_path / "out-skip.jsonl")[0]["entities"]


def run_under_umask(project, umask, command):
    result = subprocess.run(
        [sys.executable, *command], cwd=project, capture_output=True, text=True, preexec_fn=lambda: os.umask(umask)
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_output_files_get_the_mode_of_the_umask(project, conll_dir, tmp_path):
    out = tmp_path / "out"
    for command in (
        ["-m", "scripts.convert", str(out / "corpus"), "--conll-dir", str(conll_dir)],
        [
            "-m",
            "scripts.evaluate",
            "training/model-release",
            "corpus/test.spacy",
            "--output",
            str(out / "test.json"),
            "--table",
            str(out / "test.md"),
            "--code",
            CODE,
        ],
        [
            "-m",
            "annotate.predict",
            "--text",
            "Bill Gates met Reuters .",
            "--model",
            "training/model-release",
            "--code",
            CODE,
            "--output",
            str(out / "predictions.jsonl"),
            "--html",
            str(out / "predictions.html"),
        ],
    ):
        run_under_umask(project, 0o022, command)
    written = [*(out / "corpus").iterdir(), *(p for p in out.iterdir() if p.is_file())]
    assert sorted(path.name for path in written) == [
        "corpus.json",
        "dev.spacy",
        "predictions.html",
        "predictions.jsonl",
        "test.json",
        "test.md",
        "test.spacy",
        "train.spacy",
    ]
    assert {path.name: path.stat().st_mode & 0o777 for path in written} == {path.name: 0o644 for path in written}
    # The mode follows the umask, whatever it is.
    private = tmp_path / "private.jsonl"
    run_under_umask(
        project,
        0o077,
        [
            "-m",
            "annotate.predict",
            "--text",
            "Bill Gates",
            "--model",
            "training/model-release",
            "--code",
            CODE,
            "--output",
            str(private),
        ],
    )
    assert private.stat().st_mode & 0o777 == 0o600
