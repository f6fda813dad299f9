import random

import pytest
import spacy
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from spacy.scorer import get_ner_prf
from spacy.tokens import Doc, Span
from spacy.training import Example
from spacy.util import registry

from model_code import seqeval_scorer
from model_code.seqeval_scorer import score_seqeval_ner

LABELS = ["PER", "ORG", "LOC", "MISC"]


def random_spans(rng, n_words, sent_bounds):
    """Non-overlapping random entities that stay inside one sentence."""
    spans = []
    for start, end in sent_bounds:
        i = start
        while i < end:
            if rng.random() < 0.3:
                length = min(rng.randint(1, 3), end - i)
                spans.append((i, i + length, rng.choice(LABELS)))
                i += length + rng.randint(0, 1)
            else:
                i += 1
    return spans


def perturb(rng, spans, sent_bounds):
    """Predicted entities: gold ones kept, relabelled, resized or dropped, plus spurious ones."""
    predicted = []
    for start, end, label in spans:
        roll = rng.random()
        if roll < 0.5:
            predicted.append((start, end, label))
        elif roll < 0.65:
            predicted.append((start, end, rng.choice(LABELS)))
        elif roll < 0.8 and end - start > 1:
            predicted.append((start + 1, end, label))
    taken = {i for s, e, _ in predicted for i in range(s, e)} | {i for s, e, _ in spans for i in range(s, e)}
    for start, end in sent_bounds:
        for i in range(start, end):
            if i not in taken and rng.random() < 0.05:
                predicted.append((i, i + 1, rng.choice(LABELS)))
                taken.add(i)
    return predicted


def make_example(nlp, rng, n_sents=3):
    lengths = [rng.randint(3, 12) for _ in range(n_sents)]
    words = [f"w{i}" for i in range(sum(lengths))]
    sent_starts, bounds, offset = [], [], 0
    for length in lengths:
        sent_starts += [True] + [False] * (length - 1)
        bounds.append((offset, offset + length))
        offset += length
    gold = Doc(nlp.vocab, words=words, sent_starts=sent_starts)
    gold_spans = random_spans(rng, len(words), bounds)
    gold.ents = [Span(gold, s, e, label=lab) for s, e, lab in gold_spans]
    pred = Doc(nlp.vocab, words=words)
    pred.ents = [Span(pred, s, e, label=lab) for s, e, lab in perturb(rng, gold_spans, bounds)]
    return Example(pred, gold)


def iob2_by_sentence(doc, spans):
    tags = ["O"] * len(doc)
    for span in spans:
        tags[span.start] = "B-" + span.label_
        for i in range(span.start + 1, span.end):
            tags[i] = "I-" + span.label_
    return [tags[sent.start : sent.end] for sent in doc.sents]


@pytest.fixture
def nlp():
    return spacy.blank("en")


@pytest.mark.parametrize("seed", range(8))
def test_parity_with_seqeval_and_spacy(nlp, seed):
    rng = random.Random(seed)
    examples = [make_example(nlp, rng, n_sents=rng.randint(1, 4)) for _ in range(rng.randint(1, 6))]
    y_true = [seq for eg in examples for seq in iob2_by_sentence(eg.reference, eg.reference.ents)]
    y_pred = [seq for eg in examples for seq in iob2_by_sentence(eg.reference, eg.predicted.ents)]
    scores = score_seqeval_ner(examples)
    assert scores["seqeval_p"] == pytest.approx(precision_score(y_true, y_pred, zero_division=0))
    assert scores["seqeval_r"] == pytest.approx(recall_score(y_true, y_pred, zero_division=0))
    assert scores["seqeval_f"] == pytest.approx(f1_score(y_true, y_pred, zero_division=0))
    assert scores["seqeval_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    for label, per_type in scores["seqeval_per_type"].items():
        assert per_type["p"] == pytest.approx(report[label]["precision"])
        assert per_type["r"] == pytest.approx(report[label]["recall"])
        assert per_type["f"] == pytest.approx(report[label]["f1-score"])
    assert set(scores["seqeval_per_type"]) == {k for k in report if not k.endswith("avg")}
    spacy_f = get_ner_prf(examples)["ents_f"]
    assert scores["seqeval_f"] == pytest.approx(spacy_f if spacy_f is not None else 0.0)
    assert scores["ents_f"] == spacy_f


def test_perfect_and_empty_predictions(nlp):
    eg = make_example(nlp, random.Random(1))
    perfect = Example(eg.reference.copy(), eg.reference)
    assert score_seqeval_ner([perfect])["seqeval_f"] == 1.0
    empty = Example(Doc(nlp.vocab, words=[t.text for t in eg.reference]), eg.reference)
    scores = score_seqeval_ner([empty])
    assert scores["seqeval_r"] == 0.0 and scores["seqeval_f"] == 0.0


def test_scores_are_at_word_level_over_a_different_tokenization(nlp):
    """The predicted doc may be tokenized differently; entities are projected onto gold words."""
    gold = Doc(
        nlp.vocab,
        words=["New", "York-based", "Reuters", "."],
        spaces=[True, True, False, False],
        sent_starts=[True, False, False, False],
    )
    gold.ents = [Span(gold, 0, 2, label="MISC"), Span(gold, 2, 3, label="ORG")]
    pred = Doc(
        nlp.vocab, words=["New", "York", "-", "based", "Reuters", "."], spaces=[True, False, False, True, False, False]
    )
    pred.ents = [Span(pred, 0, 4, label="MISC"), Span(pred, 4, 5, label="ORG")]
    scores = score_seqeval_ner([Example(pred, gold)])
    assert scores["seqeval_f"] == 1.0 and scores["seqeval_accuracy"] == 1.0


def test_entity_across_a_sentence_boundary_is_split_per_sentence(nlp):
    gold = Doc(nlp.vocab, words=["in", "Paris", "Rome", "won"], sent_starts=[True, False, True, False])
    gold.ents = [Span(gold, 1, 2, label="LOC"), Span(gold, 2, 3, label="ORG")]
    pred = Doc(nlp.vocab, words=["in", "Paris", "Rome", "won"])
    pred.ents = [Span(pred, 1, 3, label="LOC")]
    scores = score_seqeval_ner([Example(pred, gold)])
    # "Paris Rome" becomes LOC "Paris" (right) and LOC "Rome" (wrong type).
    assert scores["seqeval_p"] == pytest.approx(0.5) and scores["seqeval_r"] == pytest.approx(0.5)
    assert scores["ents_f"] == 0.0


def test_registered_and_used_by_the_ner_component():
    assert registry.scorers.get("conll.seqeval_ner_scorer.v1") is seqeval_scorer.make_seqeval_ner_scorer
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("ner", config={"scorer": {"@scorers": "conll.seqeval_ner_scorer.v1"}})
    assert ner.scorer is score_seqeval_ner
