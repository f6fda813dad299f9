"""A seqeval NER scorer for spaCy, registered as "conll.seqeval_ner_scorer.v1".

Bundled into the packaged model with `spacy package --code`, so it imports only installed
libraries. It scores at word level (the reference tokens), not at sub-word level: each gold
and predicted Doc becomes one IOB2 tag sequence per gold sentence, and seqeval computes
entity-level precision/recall/F1 (micro overall and per type) and token accuracy.

A predicted entity that crosses a gold sentence boundary is split there into one entity per
sentence, as seqeval sees per-sentence sequences; CoNLL gold entities never cross sentences.
"""

from typing import Any, Callable, Dict, Iterable, List, Tuple

from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from spacy.scorer import get_ner_prf
from spacy.tokens import Doc, Span
from spacy.training import Example
from spacy.util import registry

SCORE_PREFIX = "seqeval"


def spans_to_iob2(doc: Doc, spans: Iterable[Span]) -> List[str]:
    tags = ["O"] * len(doc)
    for span in spans:
        for i in range(span.start, span.end):
            tags[i] = ("B-" if i == span.start else "I-") + span.label_
    return tags


def split_by_sentence(doc: Doc, tags: List[str]) -> List[List[str]]:
    """One tag sequence per sentence; an entity continuing into a new sentence restarts there."""
    bounds = [(sent.start, sent.end) for sent in doc.sents] if doc.has_annotation("SENT_START") else [(0, len(doc))]
    sequences = []
    for start, end in bounds:
        sequence = tags[start:end]
        if sequence and sequence[0].startswith("I-"):
            sequence[0] = "B-" + sequence[0][2:]
        sequences.append(sequence)
    return sequences


def example_to_tag_sequences(example: Example) -> Tuple[List[List[str]], List[List[str]]]:
    """Gold and predicted IOB2 sequences over the gold (reference) words."""
    gold_doc = example.reference
    # Predicted entities projected onto the gold tokens, as spaCy's own NER scorer does.
    predicted_spans = example.get_aligned_spans_x2y(example.predicted.ents)
    gold_tags = spans_to_iob2(gold_doc, gold_doc.ents)
    predicted_tags = spans_to_iob2(gold_doc, predicted_spans)
    return split_by_sentence(gold_doc, gold_tags), split_by_sentence(gold_doc, predicted_tags)


def tag_sequences(examples: Iterable[Example]) -> Tuple[List[List[str]], List[List[str]]]:
    y_true: List[List[str]] = []
    y_pred: List[List[str]] = []
    for example in examples:
        if not example.reference.has_annotation("ENT_IOB"):
            continue
        gold, predicted = example_to_tag_sequences(example)
        y_true.extend(gold)
        y_pred.extend(predicted)
    return y_true, y_pred


def seqeval_scores(y_true: List[List[str]], y_pred: List[List[str]]) -> Dict[str, Any]:
    """seqeval's metrics under the score keys that spaCy's training and meta read."""
    if not any(y_true):
        return {f"{SCORE_PREFIX}_{key}": None for key in ("p", "r", "f", "accuracy", "per_type")}
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    labels = sorted(key for key in report if not key.endswith(" avg"))
    report_keys = {"p": "precision", "r": "recall", "f": "f1-score"}
    per_type = {label: {key: float(report[label][name]) for key, name in report_keys.items()} for label in labels}
    return {
        f"{SCORE_PREFIX}_p": precision_score(y_true, y_pred, zero_division=0),
        f"{SCORE_PREFIX}_r": recall_score(y_true, y_pred, zero_division=0),
        f"{SCORE_PREFIX}_f": f1_score(y_true, y_pred, zero_division=0),
        f"{SCORE_PREFIX}_accuracy": accuracy_score(y_true, y_pred),
        f"{SCORE_PREFIX}_per_type": per_type,
    }


def score_seqeval_ner(examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
    """seqeval scores, plus spaCy's own ents_* scores so that `spacy evaluate` and the meta keep them."""
    examples = list(examples)
    return {**get_ner_prf(examples), **seqeval_scores(*tag_sequences(examples))}


@registry.scorers("conll.seqeval_ner_scorer.v1")
def make_seqeval_ner_scorer() -> Callable[..., Dict[str, Any]]:
    return score_seqeval_ner
