"""Collect one benchmark run into benchmarks/results/<run>.json and render its results tables into
BENCHMARKS.md, between its `results:start` and `results:end` markers: speed like for like (ours
and the HF pipeline at the same precision), accuracy, and training against the reference notebook's
method trained in the same run. Earlier runs stay in benchmarks/results/ and in git history."""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from scripts.project_util import atomic_write_text, read_json, replace_between_markers

app = typer.Typer(add_completion=False)
START, END = "<!-- results:start -->", "<!-- results:end -->"


def ratio(ours: Optional[float], theirs: Optional[float]) -> Optional[float]:
    return round(ours / theirs, 3) if ours and theirs else None


def fmt(value: Optional[float], spec: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + unit


def first_time_above(curve: List[Dict[str, Any]], f1: float) -> Optional[float]:
    """The wall time at which our dev F1 first reaches F1, from the training log."""
    return next((line["seconds"] for line in curve if line["scores"].get("seqeval_f", 0.0) >= f1), None)


def first_checkpoint_above(test_curve: List[Dict[str, Any]], f1: Optional[float]) -> Optional[Dict[str, Any]]:
    """The first kept checkpoint whose test F1 is above F1."""
    return next((point for point in test_curve if f1 is not None and point["f1"] > f1), None)


def last_checkpoint_within(test_curve: List[Dict[str, Any]], seconds: float) -> Optional[Dict[str, Any]]:
    """The last kept checkpoint trained in at most SECONDS."""
    return ([point for point in test_curve if point["seconds"] <= seconds] or [None])[-1]


def passes_test_f1(result: Dict[str, Any]) -> str:
    point = result.get("ours_passes_reference_test_f1")
    if point is None:
        return "n/a" if not result.get("test_curve") else "not in the kept checkpoints"
    share = point["seconds"] / result["reference_train_seconds"]
    return f"{point['seconds']:.0f} s ({share:.2f}x), step {point['step']}, test F1 {point['f1']:.4f}"


def results_table(results: List[Dict[str, Any]]) -> str:
    speed = [
        "| run | machine | ours fp32 | HF fp32 | **ratio fp32** | ours bf16 | HF bf16 | **ratio bf16** "
        "| HF bf16 weights | ratio to HF's faster bf16 | ours fp32, no confidences | HF fp32, sentences |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = sorted({label for r in results for label in r["test_per_type"]})
    accuracy = [
        f"| run | backbone | test F1 | {' | '.join(labels)} | dev F1 | test F1 fp32 | reference test F1 "
        "| train s | reference train s | **time ratio** | ours passes the reference's dev F1 at "
        "| ours passes the reference's test F1 at |",
        "|---" * (len(labels) + 11) + "|",
    ]
    for r in results:
        per_type = r["test_per_type"]
        speed.append(
            f"| {r['run']} | {r['machine']['cpu']} | {fmt(r['words_per_second_fp32'], '.0f')} "
            f"| {fmt(r['hf_words_per_second'], '.0f')} | **{fmt(r['ratio_fp32'], '.2f', 'x')}** "
            f"| {fmt(r['words_per_second_bf16'], '.0f')} | {fmt(r['hf_bf16_words_per_second'], '.0f')} "
            f"| **{fmt(r['ratio_bf16'], '.2f', 'x')}** | {fmt(r.get('hf_bf16_weights_words_per_second'), '.0f')} "
            f"| {fmt(r.get('ratio_bf16_to_hf_fastest'), '.2f', 'x')} "
            f"| {fmt(r['words_per_second_fp32_no_confidence'], '.0f')} "
            f"| {fmt(r['hf_words_per_second_sentences'], '.0f')} |"
        )
        accuracy.append(
            f"| {r['run']} | {r['backbone']} | **{r['test_f1']:.4f}** | "
            + " | ".join(f"{per_type[label]['f']:.4f}" if label in per_type else "n/a" for label in labels)
            + f" | {r['dev_f1']:.4f} | {r['test_f1_fp32']:.4f} | {fmt(r['reference_test_f1'], '.4f')} "
            f"| {r['train_seconds']:.0f} | {fmt(r['reference_train_seconds'], '.0f')} "
            f"| **{fmt(r['train_time_ratio'], '.2f')}** "
            f"| {fmt(r['ours_passes_reference_dev_f1_seconds'], '.0f', ' s')} "
            f"| {passes_test_f1(r)} |"
        )
    return "\n".join(
        ["Speed, words/s (median of the repetitions):", "", *speed, "", "Accuracy and training:", "", *accuracy]
    )


@app.command()
def main(
    run_name: str = typer.Argument(..., help="Name of the run: benchmarks/results/<run>.json"),
    run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Directory with the run's outputs"),
    backbone: str = typer.Option(..., help="Backbone name for the table"),
    results_dir: Path = typer.Option(Path("benchmarks/results"), help="Where the result JSON files live"),
    benchmarks_md: Path = typer.Option(Path("BENCHMARKS.md"), help="Markdown file with the results markers"),
):
    test = read_json(run_dir / "test.json")
    test_fp32 = read_json(run_dir / "test_fp32.json")
    speed = read_json(run_dir / "speed.json")
    reference = read_json(run_dir / "reference.json")
    meta = read_json(run_dir / "training" / "model-best" / "meta.json")
    curve = [json.loads(line) for line in (run_dir / "training" / "train_log.jsonl").read_text().splitlines()]
    # The test F1 of each checkpoint bench-train kept (benchmarks/score_checkpoints.py), where there is one.
    test_curve = read_json(run_dir / "test_curve.json") if (run_dir / "test_curve.json").exists() else []
    wps = speed["words_per_second"]
    train_seconds = read_json(run_dir / "training" / "train_time.json")["train_seconds"]
    benchmarked = "bf16" if "ours_bf16" in wps else "fp32"
    result = {
        "run": run_name,
        "backbone": backbone,
        # Scores and speed at the precision the benchmark runs ours in: bf16 where the CPU has it natively.
        "precision": benchmarked,
        "test_f1": test["seqeval_f"],
        "test_p": test["seqeval_p"],
        "test_r": test["seqeval_r"],
        "test_per_type": test["seqeval_per_type"],
        "test_f1_fp32": test_fp32["seqeval_f"],
        "dev_f1": meta["performance"]["seqeval_f"],
        "train_seconds": train_seconds,
        "words_per_second": wps[f"ours_{benchmarked}"],
        "words_per_second_no_confidence": wps[f"ours_{benchmarked}_no_confidence"],
        "words_per_second_fp32": wps["ours_fp32"],
        "words_per_second_fp32_no_confidence": wps["ours_fp32_no_confidence"],
        "words_per_second_bf16": wps.get("ours_bf16"),
        "hf_words_per_second": wps["hf_pipeline_fp32"],
        "hf_bf16_words_per_second": wps.get("hf_pipeline_bf16"),
        "hf_bf16_weights_words_per_second": wps.get("hf_pipeline_bf16_weights"),
        "hf_words_per_second_sentences": wps["hf_pipeline_fp32_sentences"],
        # Like for like: ours against the HF pipeline at the same precision.
        "speed_ratio": ratio(wps[f"ours_{benchmarked}"], wps[f"hf_pipeline_{benchmarked}"]),
        "ratio_fp32": ratio(wps["ours_fp32"], wps["hf_pipeline_fp32"]),
        "ratio_bf16": ratio(wps.get("ours_bf16"), wps.get("hf_pipeline_bf16")),
        # Against the faster of the HF pipeline's two bf16 switches (autocast, bf16 weights).
        "ratio_bf16_to_hf_fastest": ratio(
            wps.get("ours_bf16"),
            max((wps[name] for name in ("hf_pipeline_bf16", "hf_pipeline_bf16_weights") if name in wps), default=None),
        ),
        "reference_train_seconds": reference["train_seconds"],
        "reference_test_f1": reference["test_f1"],
        "reference_dev_f1": reference["dev_f1"],
        "train_time_ratio": ratio(train_seconds, reference["train_seconds"]),
        "ours_passes_reference_dev_f1_seconds": first_time_above(curve, reference["dev_f1"]),
        "dev_curve": [
            {"step": line["step"], "seconds": line["seconds"], "dev_f1": line["scores"].get("seqeval_f")}
            for line in curve
        ],
        "test_curve": test_curve,
        "ours_passes_reference_test_f1": first_checkpoint_above(test_curve, reference["test_f1"]),
        "ours_at_60_percent_of_reference_time": last_checkpoint_within(test_curve, 0.6 * reference["train_seconds"]),
        "confidence": test.get("confidence"),
        "errors": test.get("errors"),
        "speed": speed,
        "reference": reference,
        "machine": speed["machine"],
    }
    atomic_write_text(results_dir / f"{run_name}.json", json.dumps(result, indent=2) + "\n")
    replace_between_markers(benchmarks_md, START, END, results_table([result]))
    typer.echo(results_table([result]))


if __name__ == "__main__":
    app()
