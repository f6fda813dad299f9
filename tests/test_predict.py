"""The predict CLI and the release pipeline on real-world input: offsets, JSONL in and out,
bulk against single, long documents, odd text, malformed lines, and the displaCy page."""
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CODE, make_sentence, run_checked
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def predict(project: Path, *args: str, input_text=None, check=True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "scripts/predict.py", *args, "--model", "training/model-release", "--code", CODE]
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
        assert text[ent["start"]:ent["end"]] == ent["word"]
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
    stdin_records = [json.loads(line) for line in predict(
        project, "-", input_text="".join(json.dumps({"text": t}) + "\n" for t in texts)).stdout.splitlines()]
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
    single = [json.loads(predict(project, "--text", text).stdout) for text in texts]
    assert len(bulk) == len(single) == len(texts)
    for b, s in zip(bulk, single):
        assert [(e["entity_group"], e["start"], e["end"]) for e in b["entities"]] == \
               [(e["entity_group"], e["start"], e["end"]) for e in s["entities"]]
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
    source.write_text('{"id": 1, "text": "Bill Gates met Reuters ."}\nnot json\n[1, 2]\n{"id": 4}\n'
                      '{"id": 5, "text": "Angela Merkel visited London ."}\n')
    output = tmp_path / "out.jsonl"
    result = predict(project, str(source), "--output", str(output), "--on-error", "skip")
    assert f"{source}:2: not valid JSON" in result.stderr
    assert f"{source}:3: expected a JSON object" in result.stderr
    assert f"{source}:4: no string field 'text'" in result.stderr
    assert [r["id"] for r in read_jsonl(output)] == [1, 5]


def test_malformed_jsonl_stop_keeps_what_was_done(project, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "text": "Bill Gates met Reuters ."}\n{"id": 2, "text": "Ajax won ."}\n'
                      '{broken\n{"id": 4, "text": "Angela Merkel visited London ."}\n')
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


ODD_TEXTS = ["", " ", "\n\n\t ", "🙂🙂 Bill Gates 🚀", "東京で Angela Merkel が会った", "مرحبا Reuters بالعالم",
             "Bill\x00Gates\x07 met\x1b[31m Reuters", "x" * 5000, "Ajax " + "a" * 3000 + " London",
             "\u200b\u200e\ufeff", "London" * 400]


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_odd_input_is_handled(nlp, text):
    doc = nlp(text)
    assert doc.text == text
    for ent in doc.ents:
        assert text[ent.start_char:ent.end_char] == ent.text
        assert 0.0 <= ent._.confidence <= 1.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=40), st.sampled_from(ODD_TEXTS + ["Bill Gates", "Microsoft"])),
                min_size=1, max_size=6))
def test_fuzzed_input_never_crashes(nlp, pieces):
    text = " ".join(pieces)
    doc = nlp(text)
    assert doc.text == text
    for ent in doc.ents:
        assert text[ent.start_char:ent.end_char] == ent.text
        assert 0.0 <= ent._.confidence <= 1.0


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("Chromium is needed for the rendering test: apt-get install chromium (.ci/run does)")


def rendered_dom(html: Path, tmp_path: Path) -> str:
    result = subprocess.run(
        [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chrome'}",
         "--dump-dom", html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


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
