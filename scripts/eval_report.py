"""The evaluation report: one self-contained HTML page (charts inlined as SVG, no network needed)
with the scores per entity type, the reliability diagram of the confidences before and after
calibration, the training curve, an error analysis and the displaCy sample. Used by evaluate.py.

Error classes, over the predicted and gold entities of each document (character spans):
right (span and type), wrong type (span right), too short (inside a gold entity), too long
(around one), overlapping (crossing one), missed (no prediction overlaps the gold entity) and
spurious (no gold entity overlaps the prediction).
"""

import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from spacy.training import Example  # noqa: E402

# Text stays text in the SVG (searchable, and testable), not paths.
matplotlib.rcParams["svg.fonttype"] = "none"
ERROR_CLASSES = ("wrong type", "too short", "too long", "overlapping", "missed", "spurious")
Entity = Tuple[int, int, str]


def svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def scores_chart(scores: Dict[str, Any]) -> str:
    per_type = scores["seqeval_per_type"]
    labels = sorted(per_type) + ["overall"]
    values = {
        metric: [per_type[label][metric] for label in labels[:-1]] + [scores[f"seqeval_{metric}"]]
        for metric in ("p", "r", "f")
    }
    figure, axes = plt.subplots(figsize=(max(7.0, 0.7 * len(labels)), 3.2))
    width = 0.27
    for offset, (metric, name) in enumerate((("p", "precision"), ("r", "recall"), ("f", "F1"))):
        positions = [i + (offset - 1) * width for i in range(len(labels))]
        bars = axes.bar(positions, values[metric], width, label=name)
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    many = len(labels) > 8  # e.g. OntoNotes' 18 types: slanted names do not overlap
    axes.set_xticks(range(len(labels)), labels, rotation=30 if many else 0, ha="right" if many else "center")
    axes.set_ylim(0, 1.1)
    axes.set_ylabel("seqeval score")
    axes.set_title("Precision, recall and F1 per entity type")
    axes.legend(loc="lower right", fontsize=8)
    return svg(figure)


def reliability_chart(confidence: Dict[str, Any]) -> str:
    figure, axes = plt.subplots(figsize=(7, 3.6))
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for key, name, marker in (("uncalibrated", "before calibration", "o"), ("calibrated", "after calibration", "s")):
        rows = [row for row in confidence[key]["reliability"] if row["entities"]]
        axes.plot(
            [r["mean_confidence"] for r in rows],
            [r["precision"] for r in rows],
            marker=marker,
            label=f"{name} (ECE {confidence[key]['ece']:.3f})",
        )
        for r in rows:
            axes.annotate(
                str(r["entities"]),
                (r["mean_confidence"], r["precision"]),
                fontsize=6,
                textcoords="offset points",
                xytext=(3, -8),
            )
    axes.set_xlabel("mean confidence in the bin")
    axes.set_ylabel("precision in the bin")
    axes.set_title("Reliability of ent._.confidence (numbers: entities per bin)")
    axes.legend(loc="upper left", fontsize=8)
    return svg(figure)


def training_chart(log: List[Dict[str, Any]]) -> str:
    figure, (f1_axes, loss_axes) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [line["step"] for line in log]
    f1_axes.plot(steps, [line["scores"].get("seqeval_f", 0.0) for line in log], marker="o")
    f1_axes.set_xlabel("step")
    f1_axes.set_ylabel("dev seqeval F1")
    f1_axes.set_title("Dev F1 during training")
    for name in log[-1]["losses"]:
        loss_axes.plot(steps, [line["losses"][name] for line in log], marker=".", label=name)
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("loss since the last evaluation")
    loss_axes.set_yscale("log")  # the first evaluations dwarf the later ones
    loss_axes.set_title("Training losses")
    loss_axes.legend(fontsize=8)
    return svg(figure)


def classify(predicted: List[Entity], gold: List[Entity]) -> List[Tuple[str, Optional[Entity], Optional[Entity]]]:
    """(class, predicted entity, gold entity) for every predicted and every gold entity."""

    def overlaps(a: Entity, b: Entity) -> bool:
        return a[0] < b[1] and b[0] < a[1]

    results = []
    for p in predicted:
        matches = [g for g in gold if overlaps(p, g)]
        if not matches:
            results.append(("spurious", p, None))
        elif p in gold:
            results.append(("right", p, p))
        else:
            g = next((g for g in matches if g[:2] == p[:2]), matches[0])
            if g[:2] == p[:2]:
                kind = "wrong type"
            elif g[0] <= p[0] and p[1] <= g[1]:
                kind = "too short"
            elif p[0] <= g[0] and g[1] <= p[1]:
                kind = "too long"
            else:
                kind = "overlapping"
            results.append((kind, p, g))
    results += [("missed", None, g) for g in gold if not any(overlaps(p, g) for p in predicted)]
    return results


def marked(text: str, entities: List[Entity], start: int, end: int, css: str) -> str:
    parts, position = [], start
    for ent_start, ent_end, label in sorted(e for e in entities if e[0] < end and start < e[1]):
        ent_start, ent_end = max(ent_start, start), min(ent_end, end)
        parts.append(html.escape(text[position:ent_start]))
        parts.append(f'<mark class="{css}">{html.escape(text[ent_start:ent_end])}<sup>{label}</sup></mark>')
        position = ent_end
    parts.append(html.escape(text[position:end]))
    return "".join(parts)


def error_analysis(examples: List[Example], n_examples: int = 4) -> Tuple[Counter, Counter, Dict[str, List[str]]]:
    """Entities per class, (gold type, predicted type) pairs, and a few examples of each error class
    in their context, the gold and the predicted entities marked."""
    counts: Counter = Counter()
    confusion: Counter = Counter()
    shown: Dict[str, List[str]] = {kind: [] for kind in ERROR_CLASSES}
    for eg in examples:
        text = eg.reference.text
        gold = [(e.start_char, e.end_char, e.label_) for e in eg.reference.ents]
        predicted = [(e.start_char, e.end_char, e.label_) for e in eg.predicted.ents]
        for kind, p, g in classify(predicted, gold):
            counts[kind] += 1
            confusion[(g[2] if g else "none", p[2] if p else "none")] += 1
            if kind in shown and len(shown[kind]) < n_examples:
                spans = [span for span in (p, g) if span]
                # About 80 characters of context on each side, cut at whitespace.
                start = text.rfind(" ", 0, max(0, min(span[0] for span in spans) - 80)) + 1
                end = text.find(" ", max(span[1] for span in spans) + 80)
                end = len(text) if end < 0 else end
                shown[kind].append(
                    f'<div class="example"><div>gold: {marked(text, gold, start, end, "gold")}</div>'
                    f"<div>predicted: {marked(text, predicted, start, end, 'pred')}</div></div>"
                )
    return counts, confusion, shown


def table(header: List[str], rows: List[List[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; }}
mark.gold {{ background: #c8e6c9; }} mark.pred {{ background: #ffe0b2; }} sup {{ font-size: 0.6em; }}
.example {{ border-left: 3px solid #ccc; padding-left: 8px; margin: 6px 0; font-size: 0.9em; }}
.chart svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


def render_report(
    title: str, scores: Dict[str, Any], examples: List[Example], displacy_html: str, train_log: Optional[Path]
) -> str:
    sections = [
        f"<p>{scores['n_docs']} documents, {scores['n_words']} words. seqeval (word level): "
        f"precision <b>{scores['seqeval_p']:.4f}</b>, recall <b>{scores['seqeval_r']:.4f}</b>, "
        f"F1 <b>{scores['seqeval_f']:.4f}</b>; token accuracy {scores['seqeval_accuracy']:.4f}; "
        f"spaCy's ents_f {scores['ents_f']:.4f}.</p>",
        f'<h2>Scores per entity type</h2><div class="chart" id="scores-chart">{scores_chart(scores)}</div>',
    ]
    confidence = scores.get("confidence")
    if confidence:
        before, after = confidence["uncalibrated"], confidence["calibrated"]
        rows = [
            [
                name,
                f"{s['ece']:.4f}",
                f"{s['brier']:.4f}",
                f"{s['auroc']:.4f}" if s["auroc"] else "n/a",
                f"{s['mean_confidence']:.3f}",
                f"{s['precision']:.3f}",
            ]
            for name, s in (("before calibration", before), ("after calibration", after))
        ]
        reliability = [
            [
                f"[{r['range'][0]:.1f}, {r['range'][1]:.1f})",
                r["entities"],
                "" if r["precision"] is None else f"{r['mean_confidence']:.3f}",
                "" if r["precision"] is None else f"{r['precision']:.3f}",
                a["entities"],
                "" if a["precision"] is None else f"{a['mean_confidence']:.3f}",
                "" if a["precision"] is None else f"{a['precision']:.3f}",
            ]
            for r, a in zip(before["reliability"], after["reliability"])
        ]
        sections.append(
            "<h2>Confidence calibration</h2>"
            f'<div class="chart" id="reliability-chart">{reliability_chart(confidence)}</div>'
            + table(["", "ECE", "Brier", "AUROC right vs wrong", "mean confidence", "precision"], rows)
            + table(
                [
                    "bin",
                    "entities (before)",
                    "mean confidence",
                    "precision",
                    "entities (after)",
                    "mean confidence",
                    "precision",
                ],
                reliability,
            )
        )
    if train_log and train_log.exists():
        log = [json.loads(line) for line in train_log.read_text(encoding="utf-8").splitlines() if line.strip()]
        if log:
            sections.append(f'<h2>Training</h2><div class="chart" id="training-chart">{training_chart(log)}</div>')
    counts, confusion, shown = error_analysis(examples)
    columns = [*sorted({label for gold, predicted in confusion for label in (gold, predicted)} - {"none"}), "none"]
    sections.append(
        "<h2>Error analysis</h2>"
        + table(["class", "entities"], [[kind, counts[kind]] for kind in ("right", *ERROR_CLASSES)])
        + "<h3>Types: gold (rows) against predicted (columns)</h3>"
        + table(["gold \\ predicted", *columns], [[g, *(confusion[(g, p)] for p in columns)] for g in columns])
    )
    for kind in ERROR_CLASSES:
        if shown[kind]:
            sections.append(f"<h3>{html.escape(kind)}</h3>" + "".join(shown[kind]))
    sections.append(f'<h2>Sample (displaCy)</h2><div id="displacy">{displacy_html}</div>')
    return PAGE.format(title=html.escape(title), body="\n".join(sections))
