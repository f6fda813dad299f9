"""Texts beyond nlp.max_length are annotated whole: piece by piece, no entity split at a cut, the
offsets pointing into the original text, confidences kept; shorter texts exactly as before."""

import json
import random
import sys
from typing import Tuple

import pytest
import spacy
from conftest import CODE, make_sentence, run_checked

from model_code.long_texts import annotate_long_text, pipe_texts

MARKER = "Bill Gates visited Microsoft in Seattle on Monday ."
MARKER_ENTITIES = [("Bill Gates", "PER"), ("Microsoft", "ORG"), ("Seattle", "LOC")]


def sample_text(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    sentences, length = [], 0
    while length < n_chars:
        sentences.append(" ".join(word for word, _ in make_sentence(rng)))
        length += len(sentences[-1]) + 1
    return " ".join(sentences)


def insert_marker(text: str, position: int) -> str:
    """TEXT with MARKER and a space inserted at POSITION, a token start after whitespace (or 0)."""
    return text[:position] + MARKER + " " + text[position:]


def insert_marker_across(nlp, text: str, token_index: int) -> Tuple[str, int]:
    """TEXT with MARKER inserted so that its "Bill" is token TOKEN_INDEX - 1 and "Gates" token
    TOKEN_INDEX: a piece that ends at that token would cut the person in two. Returns the text and
    MARKER's start."""
    position = nlp.tokenizer(text)[token_index - 1].idx
    assert position == 0 or text[position - 1] == " "
    return insert_marker(text, position), position


def assert_valid_entities(entities, confidences) -> None:
    assert entities == sorted(entities) and all(a[1] <= b[0] for a, b in zip(entities, entities[1:]))
    assert all(0.0 <= confidence <= 1.0 for confidence in confidences)


def assert_marker_found(entities, marker_start: int) -> None:
    """Some entity is found in the marker sentence or the two sentences on either side, so that no
    part of the text is left unannotated. The tiny test model does not always label the marker's
    own entities right: how well depends on its random training. That the entities are those of
    the whole text is asserted beside this."""
    around = 120
    assert any(marker_start - around <= start < marker_start + len(MARKER) + around for start, _, _ in entities)


def entity_tuples(doc):
    return [(e.start_char, e.end_char, e.label_) for e in doc.ents]


@pytest.fixture
def small_max_length(nlp):
    """A 20,000-character limit, so that a 70,000-character text needs pieces and the test stays quick."""
    max_length = nlp.max_length
    nlp.max_length = 20_000
    yield nlp
    nlp.max_length = max_length


def test_pieces_give_the_entities_of_the_whole_text(small_max_length):
    nlp = small_max_length
    piece_tokens, context_tokens = 2_500, 256  # annotate_long_text's defaults
    # Markers at the start, across the first piece's end, across the place where its cut is looked
    # for (context_tokens before its end), in the middle and at the end.
    text = insert_marker(sample_text(70_000, seed=21), 0)
    text, at_cut = insert_marker_across(nlp, text, piece_tokens - context_tokens)
    text, at_edge = insert_marker_across(nlp, text, piece_tokens)
    text = insert_marker(text, text.index(" . ", 35_000) + 3)
    text = text + " " + MARKER
    doc = annotate_long_text(nlp, text, piece_tokens=piece_tokens, context_tokens=context_tokens)
    assert doc.text == text
    found = entity_tuples(doc)
    assert_valid_entities(found, [e._.confidence for e in doc.ents])
    # The same entities as the whole text annotated at once (possible here: the text is small).
    nlp.max_length = len(text) + 1
    whole = nlp(text)
    assert len(whole.ents) > 2000
    assert found == entity_tuples(whole)
    for marker_start in (0, at_cut, at_edge, len(text) - len(MARKER)):
        assert_marker_found(found, marker_start)


def test_short_texts_are_annotated_exactly_as_before(nlp):
    texts = [sample_text(500, seed) for seed in range(6)]
    before = [(entity_tuples(doc), [e._.confidence for e in doc.ents]) for doc in nlp.pipe(texts)]
    after = [(entity_tuples(doc), [e._.confidence for e in doc.ents]) for doc in pipe_texts(nlp, texts)]
    assert after == before


def test_pipe_texts_keeps_the_order_around_a_long_text(small_max_length):
    nlp = small_max_length
    texts = [MARKER, sample_text(45_000, seed=4), "Angela Merkel met Reuters in London ."]
    docs = list(pipe_texts(nlp, texts))
    assert [doc.text for doc in docs] == texts
    assert ("Bill Gates", "PER") in [(e.text, e.label_) for e in docs[0].ents]
    assert len(docs[1].ents) > 1000
    assert ("Angela Merkel", "PER") in [(e.text, e.label_) for e in docs[2].ents]


def test_predict_annotates_a_record_over_the_limit_whole(project, nlp, tmp_path):
    """A 1.2-million-character record between two short ones, with the default limit of 1,000,000."""
    # The first piece ends at token 2,500 (annotate_long_text's default piece_tokens).
    text, at_edge = insert_marker_across(nlp, insert_marker(sample_text(1_200_000, seed=8), 0), 2_500)
    text = insert_marker(text, text.index(" . ", 600_000) + 3) + " " + MARKER
    assert len(text) > 1_200_000
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"id": 1, "text": "Angela Merkel met Reuters in London ."})
        + "\n"
        + json.dumps({"id": 2, "text": text})
        + "\n"
        + json.dumps({"id": 3, "text": MARKER})
        + "\n"
    )
    output = tmp_path / "out.jsonl"
    run_checked(
        [
            sys.executable,
            "-m",
            "annotate.predict",
            str(source),
            "--output",
            str(output),
            "--on-error",
            "skip",
            "--model",
            "training/model-release",
            "--code",
            CODE,
        ],
        cwd=project,
    )
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in records] == [1, 2, 3]
    assert ("PER", "Angela Merkel") in [(e["entity_group"], e["word"]) for e in records[0]["entities"]]
    assert ("PER", "Bill Gates") in [(e["entity_group"], e["word"]) for e in records[2]["entities"]]
    long_entities = records[1]["entities"]
    found = [(e["start"], e["end"], e["entity_group"]) for e in long_entities]
    assert all(text[e["start"] : e["end"]] == e["word"] for e in long_entities)
    assert_valid_entities(found, [e["score"] for e in long_entities])
    # The same entities as the whole text annotated at once, with the limit raised for the test (the
    # entities are compared, so the confidences are left out).
    without_confidence = spacy.load(project / "training" / "model-release", exclude=["entity_confidence"])
    without_confidence.max_length = len(text) + 1
    assert found == entity_tuples(without_confidence(text))
    # Entities all through the text: at least one in each 60-odd-character sentence (the sentences
    # hold about four; the tiny model finds most of them, how many depends on its random training).
    assert len(found) > len(text) / 70
    for marker_start in (0, at_edge, text.index(MARKER, 600_000), len(text) - len(MARKER)):
        assert_marker_found(found, marker_start)
