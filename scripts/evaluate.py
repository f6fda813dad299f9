"""Evaluate a trained pipeline on a DocBin split with its seqeval scorer and write the report:
JSON (every score), a readable Markdown table, and a displaCy page of a sample of documents."""
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import typer
from spacy import displacy
from spacy.scorer import Scorer
from spacy.tokens import Span
from spacy.training import Corpus, Example
from wasabi import msg

from project_util import atomic_write_text, import_code_paths, one_line_errors, use_device

app = typer.Typer(add_completion=False)


CONFIDENCE_BINS = (0.0, 0.5, 0.9, 0.99, 1.0)


def confidence_report(examples: List[Example]) -> Optional[Dict[str, Any]]:
    """Mean `ent._.confidence` of correct and of wrong predicted entities, and precision per
    confidence bin: does the confidence mean what it says?"""
    if not Span.has_extension("confidence"):
        return None
    correct, wrong = [], []
    for eg in examples:
        gold = {(e.start, e.end, e.label_) for e in eg.reference.ents}
        for ent in eg.predicted.ents:
            if ent._.confidence is None:
                return None
            aligned = eg.get_aligned_spans_x2y([ent])
            is_correct = bool(aligned) and (aligned[0].start, aligned[0].end, ent.label_) in gold
            (correct if is_correct else wrong).append(ent._.confidence)
    return {
        "n_correct": len(correct),
        "n_wrong": len(wrong),
        "mean_confidence_correct": sum(correct) / len(correct) if correct else None,
        "mean_confidence_wrong": sum(wrong) / len(wrong) if wrong else None,
        "bins": [confidence_bin(correct, wrong, low, high) for low, high in zip(CONFIDENCE_BINS, CONFIDENCE_BINS[1:])],
    }


def confidence_bin(correct: List[float], wrong: List[float], low: float, high: float) -> Dict[str, Any]:
    """How many entities have a confidence in [low, high) ([low, 1] for the last bin), and how many are right."""
    def count(values: List[float]) -> int:
        return sum(low <= value < high or value == high == 1.0 for value in values)

    n_correct, n_wrong = count(correct), count(wrong)
    n = n_correct + n_wrong
    return {"range": [low, high], "entities": n, "precision": n_correct / n if n else None}


def scores_table(scores: Dict[str, Any]) -> str:
    rows = [("**overall**", scores["seqeval_p"], scores["seqeval_r"], scores["seqeval_f"])]
    rows += [(label, s["p"], s["r"], s["f"]) for label, s in sorted(scores["seqeval_per_type"].items())]
    lines = ["| type | precision | recall | F1 |", "|---|---|---|---|"]
    lines += [f"| {name} | {p:.4f} | {r:.4f} | {f:.4f} |" for name, p, r, f in rows]
    lines.append("")
    lines.append(f"Token accuracy: {scores['seqeval_accuracy']:.4f}. spaCy's ents_f: {scores['ents_f']:.4f}.")
    return "\n".join(lines) + "\n"


@app.command()
def main(
    model: str = typer.Argument(..., help="Pipeline directory or installed package name"),
    data_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="DocBin (.spacy) to score"),
    output_json: Path = typer.Option(..., "--output", "-o", help="JSON report with every score"),
    output_table: Optional[Path] = typer.Option(None, "--table", help="Markdown table of the seqeval scores"),
    html_path: Optional[Path] = typer.Option(None, "--html", help="displaCy page of the first documents"),
    n_html_docs: int = typer.Option(10, "--n-html-docs", help="How many documents the displaCy page shows"),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files with registered functions"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for the CPU"),
    cpu_bf16: Optional[bool] = typer.Option(None, "--cpu-bf16/--no-cpu-bf16", help="Override the bf16 setting"),
):
    """Score MODEL on DATA_PATH with the pipeline's own scorers (seqeval for the NER)."""
    import_code_paths(code_paths)
    with one_line_errors():
        use_device(gpu_id)
    overrides = {} if cpu_bf16 is None else {"components.transformer.model.cpu_bf16": cpu_bf16}
    nlp = spacy.load(model, config=overrides)
    examples = list(Corpus(data_path)(nlp))
    start = time.perf_counter()
    for eg, doc in zip(examples, nlp.pipe(eg.predicted for eg in examples)):
        eg.predicted = doc
    scores = Scorer(nlp).score(examples)
    scores["n_docs"] = len(examples)
    scores["n_words"] = sum(len(eg.reference) for eg in examples)
    scores["seconds"] = round(time.perf_counter() - start, 2)
    scores["confidence"] = confidence_report(examples)
    atomic_write_text(output_json, json.dumps(scores, indent=2) + "\n")
    table = scores_table(scores)
    if scores["confidence"]:
        c = scores["confidence"]
        table += (f"Mean entity confidence: {c['mean_confidence_correct']:.3f} on {c['n_correct']} correct, "
                  f"{c['mean_confidence_wrong']:.3f} on {c['n_wrong']} wrong entities.\n")
    if output_table:
        atomic_write_text(output_table, f"# {data_path.name}: seqeval, word level\n\n{table}")
    if html_path:
        docs = [eg.predicted for eg in examples[:n_html_docs]]
        atomic_write_text(html_path, displacy.render(docs, style="ent", page=True))
    msg.good(f"Scored {len(examples)} docs ({scores['n_words']} words) in {scores['seconds']} s")
    print(table)


if __name__ == "__main__":
    app()
