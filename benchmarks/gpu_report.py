"""Collect a gpu-check run into benchmarks/results/<run>-gpu.json and render the GPU table of
every committed GPU run into BENCHMARKS.md, between its `gpu-results:start` and `gpu-results:end`
markers: the GPU, training words/s, dev and test seqeval F1 after the short run, and inference
words/s of ours and of the HF token-classification pipeline, both in fp16, side by side."""

import json
from pathlib import Path
from typing import Any, Dict, List

import typer

from benchmarks.benchmark_report import fmt, ratio
from scripts.project_util import atomic_write_text, read_json, replace_between_markers

app = typer.Typer(add_completion=False)
START, END = "<!-- gpu-results:start -->", "<!-- gpu-results:end -->"


def results_table(results: List[Dict[str, Any]]) -> str:
    lines = [
        "| run | GPU | backbone | steps | train words/s | dev F1 | test F1 | ours fp16 words/s | HF fp16 words/s "
        "| ratio | ours fp32 words/s | HF fp32 words/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['run']} | {r['gpu']} | {r['backbone']} | {r['train_steps']} | {r['train_words_per_second']:.0f} "
            f"| {r['dev_f1']:.4f} | {r['test_f1']:.4f} | {fmt(r['words_per_second'], '.0f')} "
            f"| {fmt(r['hf_words_per_second'], '.0f')} | **{fmt(r['speed_ratio'], '.2f', 'x')}** "
            f"| {r['words_per_second_fp32']:.0f} | {r['hf_words_per_second_fp32']:.0f} |"
        )
    return "\n".join(lines)


@app.command()
def main(
    run_name: str = typer.Argument(..., help="Name of the run: benchmarks/results/<run>-gpu.json"),
    run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Directory with the gpu-check outputs"),
    backbone: str = typer.Option(..., help="Backbone name for the table"),
    results_dir: Path = typer.Option(Path("benchmarks/results"), help="Where the result JSON files live"),
    benchmarks_md: Path = typer.Option(Path("BENCHMARKS.md"), help="Markdown file with the gpu-results markers"),
):
    log = [json.loads(line) for line in (run_dir / "training" / "train_log.jsonl").read_text().splitlines()]
    test = read_json(run_dir / "test.json")
    speed = read_json(run_dir / "speed.json")
    meta = read_json(run_dir / "training" / "model-best" / "meta.json")
    wps = speed["words_per_second"]
    # A dry run of gpu-check on the CPU (--vars.gpu_id -1) measures bf16 (where the CPU has it) for fp16.
    low = "fp16" if speed["gpu_id"] >= 0 else "bf16"
    result = {
        "run": run_name,
        "gpu": speed["machine"]["cuda"],
        "backbone": backbone,
        "train_steps": log[-1]["step"],
        # Words trained on over the wall time of the training loop, dev evaluations included.
        "train_words_per_second": round(log[-1]["words"] / log[-1]["seconds"], 1),
        "train_seconds": read_json(run_dir / "training" / "train_time.json")["train_seconds"],
        "dev_f1": meta["performance"]["seqeval_f"],
        "test_f1": test["seqeval_f"],
        "test_per_type": test["seqeval_per_type"],
        "precision": low,
        "words_per_second": wps.get(f"ours_{low}"),
        "words_per_second_no_confidence": wps.get(f"ours_{low}_no_confidence"),
        "words_per_second_fp32": wps["ours_fp32"],
        "hf_words_per_second": wps.get(f"hf_pipeline_{low}"),
        "hf_words_per_second_fp32": wps["hf_pipeline_fp32"],
        "speed_ratio": ratio(wps.get(f"ours_{low}"), wps.get(f"hf_pipeline_{low}")),
        "training_log": log,
        "speed": speed,
        "machine": speed["machine"],
    }
    atomic_write_text(results_dir / f"{run_name}-gpu.json", json.dumps(result, indent=2) + "\n")
    results = [read_json(path) for path in sorted(results_dir.glob("*-gpu.json"))]
    replace_between_markers(benchmarks_md, START, END, results_table(results))
    typer.echo(results_table([result]))


if __name__ == "__main__":
    app()
