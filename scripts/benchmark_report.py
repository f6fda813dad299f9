"""Collect one benchmark run into benchmarks/results/<run>.json and render the results table of
every committed run into BENCHMARKS.md, between its `results:start` and `results:end` markers."""
import json
from pathlib import Path
from typing import Any, Dict, List

import typer

from project_util import atomic_write_text, read_json, replace_between_markers

app = typer.Typer(add_completion=False)
START, END = "<!-- results:start -->", "<!-- results:end -->"
# The reference notebook's method, measured on this machine with the same data and backbone.
REFERENCE = {"test_f1": 0.842, "dev_f1": 0.885, "train_seconds": 1257.0, "words_per_second": 3284.0}


def results_table(results: List[Dict[str, Any]]) -> str:
    lines = [
        "| run | backbone | test F1 | PER | ORG | LOC | MISC | dev F1 | train s | ours words/s | HF words/s | ratio "
        "| test F1 fp32 | ours fp32 words/s | no-confidence words/s | HF words/s, sentences |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per_type = r["test_per_type"]
        lines.append(
            f"| {r['run']} | {r['backbone']} | **{r['test_f1']:.4f}** | "
            + " | ".join(f"{per_type[label]['f']:.4f}" for label in ("PER", "ORG", "LOC", "MISC"))
            + f" | {r['dev_f1']:.4f} | {r['train_seconds']:.0f} | {r['words_per_second']:.0f} "
            f"| {r['hf_words_per_second']:.0f} | **{r['speed_ratio']:.2f}x** | {r['test_f1_fp32']:.4f} "
            f"| {r['words_per_second_fp32']:.0f} | {r['words_per_second_no_confidence']:.0f} "
            f"| {r['hf_words_per_second_sentences']:.0f} |"
        )
    return "\n".join(lines)


@app.command()
def main(
    run_name: str = typer.Argument(..., help="Name of the run: benchmarks/results/<run>.json"),
    run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Directory with the run's outputs"),
    backbone: str = typer.Option(..., help="Backbone name for the table"),
    results_dir: Path = typer.Option(Path("benchmarks/results"), help="Where the result JSON files live"),
    benchmarks_md: Path = typer.Option(Path("BENCHMARKS.md"), help="Markdown file with the results markers"),
):
    test_bf16 = read_json(run_dir / "test_bf16.json")
    test_fp32 = read_json(run_dir / "test_fp32.json")
    speed = read_json(run_dir / "speed.json")
    meta = read_json(run_dir / "training" / "model-best" / "meta.json")
    wps = speed["words_per_second"]
    result = {
        "run": run_name,
        "backbone": backbone,
        "test_f1": test_bf16["seqeval_f"],
        "test_p": test_bf16["seqeval_p"],
        "test_r": test_bf16["seqeval_r"],
        "test_per_type": test_bf16["seqeval_per_type"],
        "test_f1_fp32": test_fp32["seqeval_f"],
        "dev_f1": meta["performance"]["seqeval_f"],
        "train_seconds": read_json(run_dir / "training" / "train_time.json")["train_seconds"],
        "words_per_second": wps["ours_bf16"],
        "words_per_second_no_confidence": wps["ours_bf16_no_confidence"],
        "words_per_second_fp32": wps["ours_fp32"],
        "hf_words_per_second": wps["hf_pipeline_fp32"],
        "hf_words_per_second_sentences": wps["hf_pipeline_fp32_sentences"],
        "speed_ratio": round(wps["ours_bf16"] / wps["hf_pipeline_fp32"], 3),
        "confidence": test_bf16.get("confidence"),
        "speed": speed,
        "reference": REFERENCE,
        "machine": speed["machine"],
    }
    atomic_write_text(results_dir / f"{run_name}.json", json.dumps(result, indent=2) + "\n")
    # The GPU runs (scripts/gpu_report.py) have a table of their own.
    results = [read_json(path) for path in sorted(results_dir.glob("*.json")) if not path.stem.endswith("-gpu")]
    replace_between_markers(benchmarks_md, START, END, results_table(results))
    typer.echo(results_table([result]))


if __name__ == "__main__":
    app()
