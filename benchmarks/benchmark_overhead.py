"""The pipeline's CPU-side cost: words/s of the whole pipeline (confidences on) and seconds of each
component over the test split, with a transformer that does almost no matrix work (2 layers of
width 32, `bench-overhead` builds and trains it). What is left is the per-word work on the CPU
(tokenization, alignment, splitting the batch per Doc, the NER's transitions, the confidences),
which on a GPU bounds what one process can reach.

Before and after, side by side in one process: the transformer component as spacy-transformers
runs it (`array_alignment = false`: Token objects) and from arrays (`array_alignment = true`),
alternating, median of the repetitions; the two must give the same entities and confidences.
Writes a JSON and the table between `overhead:start` and `overhead:end` in BENCHMARKS.md.
"""
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import spacy
import typer
from spacy.tokens import DocBin

# The shared helpers (scripts/) and the packaged code (model_code/), for this script run as a file.
sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("scripts", "model_code")]
from benchmark_speed import component_seconds, machine_info
from project_util import atomic_write_text, import_code_paths, one_line_errors, replace_between_markers

app = typer.Typer(add_completion=False)
START, END = "<!-- overhead:start -->", "<!-- overhead:end -->"
VARIANTS = {"spacy-transformers (Token objects)": False, "from arrays": True}


def entities(docs) -> List:
    return [[(e.start_char, e.end_char, e.label_, e._.confidence) for e in doc.ents] for doc in docs]


def results_table(result: Dict) -> str:
    components = list(next(iter(result["components_seconds"].values())))
    lines = [f"| {result['words']:,} words, median of {result['repetitions']} | words/s | "
             + " | ".join(f"{name} s" for name in components) + " |",
             "|---|---|" + "---|" * len(components)]
    for variant, words_per_second in result["words_per_second"].items():
        seconds = result["components_seconds"][variant]
        lines.append(f"| {variant} | {words_per_second:,.0f} | " + " | ".join(f"{seconds[n]:.3f}" for n in components) + " |")
    lines.append(f"| **after ÷ before** | **{result['speedup']:.2f}×** words/s | " + " | ".join(
        "n/a" if result["component_ratio"][n] is None else f"{result['component_ratio'][n]:.2f}× the time"
        for n in components) + " |")
    return "\n".join(lines)


@app.command()
def main(
    model: Path = typer.Argument(..., exists=True, file_okay=False, help="Release pipeline with the tiny transformer"),
    data: Path = typer.Argument(..., exists=True, dir_okay=False, help="DocBin whose texts are annotated (test split)"),
    output: Path = typer.Option(..., "--output", "-o", help="Result JSON"),
    code: str = typer.Option("", help="Comma-separated Python files with the registered functions"),
    repetitions: int = typer.Option(3, min=1, help="Repetitions of each variant, alternating"),
    benchmarks_md: Path = typer.Option(Path("BENCHMARKS.md"), help="Markdown file with the overhead markers"),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the table into BENCHMARKS_MD"),
    cpu_bf16: bool = typer.Option(False, "--cpu-bf16", help="Run the transformer in bf16 on the CPU (both variants)"),
):
    with one_line_errors():
        import_code_paths(code)
        pipelines = {name: spacy.load(model, config={"components": {"transformer": {"model": {
            "array_alignment": on, "cpu_bf16": cpu_bf16}}}}) for name, on in VARIANTS.items()}
        first = next(iter(pipelines.values()))
        texts = [doc.text for doc in DocBin().from_disk(data).get_docs(first.vocab)]
        words = sum(len(text.split()) for text in texts)
        annotations = {name: entities(nlp.pipe(texts)) for name, nlp in pipelines.items()}  # also warms up
        same = len({json.dumps(a) for a in annotations.values()}) == 1
        seconds: Dict[str, List[float]] = {name: [] for name in pipelines}
        components: Dict[str, List[Dict[str, float]]] = {name: [] for name in pipelines}
        for _ in range(repetitions):
            for name, nlp in pipelines.items():
                start = time.perf_counter()
                list(nlp.pipe(texts))
                seconds[name].append(time.perf_counter() - start)
                components[name].append(component_seconds(nlp, texts))
        median_components = {name: {c: statistics.median(r[c] for r in runs) for c in runs[0]}
                             for name, runs in components.items()}
        before, after = VARIANTS
        result = {
            "words": words, "texts": len(texts), "repetitions": repetitions, "machine": machine_info(),
            "cpu_bf16": cpu_bf16,
            "same_entities_and_confidences": same,
            "seconds": seconds,
            "words_per_second": {name: round(words / statistics.median(s), 1) for name, s in seconds.items()},
            "components_seconds": median_components,
        }
        result["speedup"] = round(result["words_per_second"][after] / result["words_per_second"][before], 3)
        result["component_ratio"] = {c: round(median_components[after][c] / median_components[before][c], 3)
                                     if median_components[before][c] else None for c in median_components[after]}
        atomic_write_text(output, json.dumps(result, indent=2) + "\n")
        if report:
            replace_between_markers(benchmarks_md, START, END, results_table(result))
        typer.echo(results_table(result))
        if not same:
            typer.echo("Error: the two variants gave different entities or confidences", err=True)
            raise typer.Exit(1)


if __name__ == "__main__":
    app()
