"""Evaluate a trained pipeline on a DocBin split with its seqeval scorer and write the report:
JSON (every score, the calibration of the confidences and the error counts), a readable Markdown
table, a displaCy page of a sample of documents, and the HTML report (eval_report.py)."""

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from spacy import displacy
from spacy.language import Language
from spacy.scorer import Scorer
from spacy.training import Corpus, Example
from wasabi import msg

from scripts.confidence_metrics import annotate, confidence_report
from scripts.eval_report import error_analysis, render_report
from scripts.project_util import (
    SetupError,
    Switch,
    atomic_write_text,
    check_not_an_input,
    check_output_path,
    first_line,
    import_code_paths,
    load_pipeline,
    one_line_errors,
    resolve_switch,
    use_device,
)

app = typer.Typer(add_completion=False)


def scores_table(scores: Dict[str, Any]) -> str:
    rows = [("**overall**", scores["seqeval_p"], scores["seqeval_r"], scores["seqeval_f"])]
    rows += [(label, s["p"], s["r"], s["f"]) for label, s in sorted(scores["seqeval_per_type"].items())]
    lines = ["| type | precision | recall | F1 |", "|---|---|---|---|"]
    lines += [f"| {name} | {p:.4f} | {r:.4f} | {f:.4f} |" for name, p, r, f in rows]
    lines.append("")
    lines.append(f"Token accuracy: {scores['seqeval_accuracy']:.4f}. spaCy's ents_f: {scores['ents_f']:.4f}.")
    confidence = scores["confidence"]
    if confidence:
        lines += [
            "",
            "Entity confidences (right: span and type match a gold entity):",
            "",
            "| | ECE | Brier | AUROC right vs wrong | mean confidence | precision |",
            "|---|---|---|---|---|---|",
        ]
        for name, key in (("before calibration", "uncalibrated"), ("after calibration", "calibrated")):
            c = confidence[key]
            auroc = f"{c['auroc']:.4f}" if c["auroc"] is not None else "n/a"
            lines.append(
                f"| {name} | {c['ece']:.4f} | {c['brier']:.4f} | {auroc} | {c['mean_confidence']:.3f} "
                f"| {c['precision']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def read_examples(data_path: Path, nlp: Language) -> List[Example]:
    """The gold Docs of DATA_PATH as examples; one line when the file is no DocBin or holds nothing to score."""
    try:
        examples = list(Corpus(data_path)(nlp))
    except Exception as err:  # srsly, zlib and msgpack each raise their own class for a damaged file
        cause = first_line(err)
        raise SetupError(
            f"{data_path}: not a readable DocBin file ({cause.split('. ')[0]}). Fix: give a .spacy file "
            "written by convert (spacy project run convert)."
        ) from err
    if not examples:
        raise SetupError(f"{data_path}: holds no documents. Fix: convert the split again.")
    if not any(eg.reference.has_annotation("ENT_IOB") for eg in examples):
        raise SetupError(
            f"{data_path}: its documents have no entity annotation, so there is nothing to score. "
            "Fix: give a split with gold entities."
        )
    return examples


@app.command()
def main(
    model: str = typer.Argument(..., help="Pipeline directory or installed package name"),
    data_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="DocBin (.spacy) to score"),
    output_json: Path = typer.Option(..., "--output", "-o", help="JSON report with every score"),
    output_table: Optional[Path] = typer.Option(None, "--table", help="Markdown table of the seqeval scores"),
    html_path: Optional[Path] = typer.Option(None, "--html", help="displaCy page of the first documents"),
    report_path: Optional[Path] = typer.Option(None, "--report", help="Self-contained HTML report with charts"),
    train_log: Optional[Path] = typer.Option(
        None, "--train-log", help="The training's train_log.jsonl, for the report"
    ),
    n_html_docs: int = typer.Option(10, "--n-html-docs", help="How many documents the displaCy page shows"),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files with registered functions"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for the CPU"),
    cpu_bf16: Optional[Switch] = typer.Option(
        None, help="Override the bf16 setting: true, false or auto (where the CPU has AMX or AVX512-BF16)"
    ),
):
    """Score MODEL on DATA_PATH with the pipeline's own scorers (seqeval for the NER)."""
    import_code_paths(code_paths)
    bf16 = resolve_switch(cpu_bf16)
    overrides = {} if bf16 is None else {"components.transformer.model.cpu_bf16": bf16}
    with one_line_errors():
        # Every output checked, the data read and the model loaded before any scoring.
        for option, path in (
            ("--output", output_json),
            ("--table", output_table),
            ("--html", html_path),
            ("--report", report_path),
        ):
            if path:
                check_not_an_input(path, {"DATA_PATH": data_path})
                check_output_path(path, option)
        use_device(gpu_id)
        nlp = load_pipeline(model, config=overrides)
        examples = read_examples(data_path, nlp)
    start = time.perf_counter()
    annotate(nlp, examples)
    scores = Scorer(nlp).score(examples)
    scores["n_docs"] = len(examples)
    scores["n_words"] = sum(len(eg.reference) for eg in examples)
    scores["seconds"] = round(time.perf_counter() - start, 2)
    scores["confidence"] = confidence_report(examples)
    counts, confusion, _ = error_analysis(examples)
    scores["errors"] = {"counts": dict(counts), "confusion": [[g, p, n] for (g, p), n in sorted(confusion.items())]}
    atomic_write_text(output_json, json.dumps(scores, indent=2) + "\n")
    table = scores_table(scores)
    if output_table:
        atomic_write_text(output_table, f"# {data_path.name}: seqeval, word level\n\n{table}")
    sample = [eg.predicted for eg in examples[:n_html_docs]]
    if html_path:
        atomic_write_text(html_path, displacy.render(sample, style="ent", page=True))
    if report_path:
        report = render_report(
            f"{model} on {data_path.name}",
            scores,
            examples,
            displacy.render(sample, style="ent", page=False),
            train_log,
        )
        atomic_write_text(report_path, report)
    msg.good(f"Scored {len(examples)} docs ({scores['n_words']} words) in {scores['seconds']} s")
    print(table)


if __name__ == "__main__":
    app()
