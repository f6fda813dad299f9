"""Do the entity confidences mean what they say? Shared by calibrate.py (which fits the map on dev)
and evaluate.py (which reports it on test).

An entity counts as right when its character span and its label match a gold entity exactly.
With 10 equal-width bins: the expected calibration error (ECE: the entity-weighted mean gap
between a bin's mean confidence and its precision), the reliability table, the Brier score, and
the AUROC of the confidence for right against wrong entities (how well it ranks them).
"""

from typing import Any, Dict, List, Optional

import numpy
from sklearn.metrics import brier_score_loss, roc_auc_score
from spacy.language import Language
from spacy.training import Example

N_BINS = 10


def annotate(nlp: Language, examples: List[Example]) -> List[Example]:
    """EXAMPLES with their predicted Docs annotated by NLP (in place), for the scorers."""
    for eg, doc in zip(examples, nlp.pipe(eg.predicted for eg in examples)):
        eg.predicted = doc
    return examples


def entity_outcomes(examples: List[Example]) -> Optional[Dict[str, numpy.ndarray]]:
    """Per predicted entity: its confidence, the NER's probability before calibration, and
    whether it is right. None where the pipeline gives no confidences."""
    confidence, raw, right = [], [], []
    for eg in examples:
        gold = {(e.start_char, e.end_char, e.label_) for e in eg.reference.ents}
        for ent in eg.predicted.ents:
            if not ent.has_extension("confidence") or ent._.confidence is None:
                return None
            confidence.append(ent._.confidence)
            raw.append(ent._.raw_confidence)
            right.append((ent.start_char, ent.end_char, ent.label_) in gold)
    return {"confidence": numpy.array(confidence), "raw": numpy.array(raw), "right": numpy.array(right, dtype=bool)}


def reliability_table(confidence: numpy.ndarray, right: numpy.ndarray) -> List[Dict[str, Any]]:
    """Per bin [k/10, (k+1)/10) (the last one closed): entities, mean confidence, precision."""
    bins = numpy.minimum((confidence * N_BINS).astype(int), N_BINS - 1)
    table = []
    for k in range(N_BINS):
        in_bin = bins == k
        n = int(in_bin.sum())
        table.append(
            {
                "range": [k / N_BINS, (k + 1) / N_BINS],
                "entities": n,
                "mean_confidence": float(confidence[in_bin].mean()) if n else None,
                "precision": float(right[in_bin].mean()) if n else None,
            }
        )
    return table


def calibration_summary(confidence: numpy.ndarray, right: numpy.ndarray) -> Dict[str, Any]:
    table = reliability_table(confidence, right)
    n = len(confidence)
    ece = sum(row["entities"] / n * abs(row["mean_confidence"] - row["precision"]) for row in table if row["entities"])
    return {
        "entities": n,
        "precision": float(right.mean()),
        "mean_confidence": float(confidence.mean()),
        "mean_confidence_right": float(confidence[right].mean()) if right.any() else None,
        "mean_confidence_wrong": float(confidence[~right].mean()) if (~right).any() else None,
        "ece": float(ece),
        "brier": float(brier_score_loss(right, confidence)),
        "auroc": float(roc_auc_score(right, confidence)) if 0 < right.sum() < n else None,
        "reliability": table,
    }


def confidence_report(examples: List[Example]) -> Optional[Dict[str, Any]]:
    """The calibration figures of the confidences and of the NER's probabilities before calibration."""
    outcomes = entity_outcomes(examples)
    if outcomes is None or not len(outcomes["right"]):
        return None
    return {
        "calibrated": calibration_summary(outcomes["confidence"], outcomes["right"]),
        "uncalibrated": calibration_summary(outcomes["raw"], outcomes["right"]),
    }
