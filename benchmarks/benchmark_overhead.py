"""The pipeline's CPU-side cost: words/s of the whole pipeline (confidences on) and seconds of each
component over the test split, with a transformer that does almost no matrix work (2 layers of
width 32, `bench-overhead` builds and trains it). What is left is the per-word work on the CPU
(tokenization, alignment, splitting the batch per Doc, the NER's transitions, the confidences),
which on a GPU bounds what one process can reach.

Side by side, alternating, median of the repetitions: the transformer component as
spacy-transformers runs it (`array_alignment = false`: Token objects, in its default sub-batches of
`max_batch_items = 4096`) and from arrays (`array_alignment = true`, the model's own sub-batches),
both in this process; with `--baseline-python`, also the Token objects
in another Python environment (another spaCy, say the release before), run there by this script's
`--serve` mode and timed the same way. All variants must give the same entities, and the same
confidences but for float rounding.
Writes a JSON and the table between `overhead:start` and `overhead:end` in BENCHMARKS.md.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import spacy
import spacy_transformers  # noqa: F401 (registers the transformer factory)
import typer
from spacy.language import Language
from spacy.tokens import DocBin
from spacy.vocab import Vocab

from benchmarks.benchmark_speed import component_seconds, machine_info
from scripts.project_util import (
    SetupError,
    atomic_write_text,
    import_code_paths,
    one_line_errors,
    replace_between_markers,
)

app = typer.Typer(add_completion=False)
START, END = "<!-- overhead:start -->", "<!-- overhead:end -->"
TOKEN_OBJECTS, FROM_ARRAYS = "spacy-transformers (Token objects)", "from arrays"
ARRAY_ALIGNMENT = {TOKEN_OBJECTS: False, FROM_ARRAYS: True}
# spacy-transformers' Doc sub-batches (its default max_batch_items) for the Token objects; the
# model's own for the arrays.
MAX_BATCH_ITEMS = {
    TOKEN_OBJECTS: Language.get_factory_meta("transformer").default_config["max_batch_items"],
    FROM_ARRAYS: None,
}
Repetition = Tuple[float, Dict[str, float]]
# Doc sub-batches of other sizes group and pad the windows otherwise: the confidences then differ in
# float rounding (under 1e-6 on the test split), the entities not at all.
CONFIDENCE_TOLERANCE = 1e-5


def read_texts(data: Path) -> List[str]:
    return [doc.text for doc in DocBin().from_disk(data).get_docs(Vocab())]


class Pipeline:
    """A variant in this process: the release pipeline with the transformer's batches built one way."""

    def __init__(self, model: Path, texts: List[str], variant: str, cpu_bf16: bool):
        self.nlp = spacy.load(
            model,
            config={
                "components": {
                    "transformer": {"model": {"array_alignment": ARRAY_ALIGNMENT[variant], "cpu_bf16": cpu_bf16}}
                }
            },
        )
        if MAX_BATCH_ITEMS[variant]:  # the saved component settings win over a config at load: set here
            self.nlp.get_pipe("transformer").cfg["max_batch_items"] = MAX_BATCH_ITEMS[variant]
        self.texts = texts
        self.spacy_version = spacy.__version__

    def entities(self) -> List:
        return [
            [(e.start_char, e.end_char, e.label_, e._.confidence) for e in doc.ents]
            for doc in self.nlp.pipe(self.texts)
        ]

    def repetition(self) -> Repetition:
        start = time.perf_counter()
        list(self.nlp.pipe(self.texts))
        return time.perf_counter() - start, component_seconds(self.nlp, self.texts)


class PipelineInPython:
    """A variant in another Python: this script's --serve mode there, one request a line."""

    def __init__(self, python: Path, model: Path, data: Path, variant: str, code: str, cpu_bf16: bool):
        self.python = python
        command = [str(python), "-m", __spec__.name, str(model), str(data), "--code", code, "--serve", variant]
        # The other interpreter finds this project's packages from its root, wherever the caller runs.
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            command + (["--cpu-bf16"] if cpu_bf16 else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.spacy_version = self.ask("spacy_version")

    def ask(self, request: str):
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise SetupError(
                f"the benchmark stopped in {self.python} (its error is above): check that it has the "
                "project's requirements, with the spaCy to compare"
            )
        return json.loads(answer)

    def entities(self) -> List:
        return self.ask("entities")

    def repetition(self) -> Repetition:
        return tuple(self.ask("repetition"))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def serve(pipeline: Pipeline) -> None:
    """Answer the requests of PipelineInPython on stdin, one JSON line each."""
    answers = {
        "spacy_version": lambda: pipeline.spacy_version,
        "entities": pipeline.entities,
        "repetition": pipeline.repetition,
    }
    for request in sys.stdin:
        sys.stdout.write(json.dumps(answers[request.strip()]()) + "\n")
        sys.stdout.flush()


def agreement(annotations: Dict[str, List]) -> Tuple[bool, Optional[float]]:
    """Whether the variants' ANNOTATIONS (per Doc, (start, end, label, confidence) per entity) have
    the same entities, and if so the largest difference between their confidences."""
    first, *others = [[[tuple(entity) for entity in doc] for doc in docs] for docs in annotations.values()]
    if any([[e[:3] for e in doc] for doc in other] != [[e[:3] for e in doc] for doc in first] for other in others):
        return False, None
    return True, max(
        (abs(a[3] - b[3]) for other in others for doc_a, doc_b in zip(first, other) for a, b in zip(doc_a, doc_b)),
        default=0.0,
    )


def results_table(result: Dict) -> str:
    components = list(next(iter(result["components_seconds"].values())))
    lines = [
        f"| {result['words']:,} words, median of {result['repetitions']} | words/s | "
        + " | ".join(f"{name} s" for name in components)
        + " |",
        "|---|---|" + "---|" * len(components),
    ]
    for variant, words_per_second in result["words_per_second"].items():
        seconds = result["components_seconds"][variant]
        lines.append(
            f"| {variant} | {words_per_second:,.0f} | " + " | ".join(f"{seconds[n]:.3f}" for n in components) + " |"
        )
    for before, ratios in result["ratios"].items():
        lines.append(
            f"| **from arrays ÷ {before}** | **{ratios['words_per_second']:.2f}×** words/s | "
            + " | ".join("n/a" if ratios[n] is None else f"{ratios[n]:.2f}× the time" for n in components)
            + " |"
        )
    return "\n".join(lines)


@app.command()
def main(
    model: Path = typer.Argument(..., exists=True, file_okay=False, help="Release pipeline with the tiny transformer"),
    data: Path = typer.Argument(..., exists=True, dir_okay=False, help="DocBin whose texts are annotated (test split)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Result JSON (required unless --serve)"),
    code: str = typer.Option("", help="Comma-separated Python files with the registered functions"),
    repetitions: int = typer.Option(3, min=1, help="Repetitions of each variant, alternating"),
    baseline_python: Optional[Path] = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="Another Python environment (say with an earlier spaCy): also time the Token objects there",
    ),
    benchmarks_md: Path = typer.Option(Path("BENCHMARKS.md"), help="Markdown file with the overhead markers"),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the table into BENCHMARKS_MD"),
    cpu_bf16: bool = typer.Option(False, "--cpu-bf16", help="Run the transformer in bf16 on the CPU (all variants)"),
    serve_variant: Optional[str] = typer.Option(
        None, "--serve", hidden=True, help="Run this variant for --baseline-python, on stdin requests"
    ),
):
    with one_line_errors():
        import_code_paths(code)
        if serve_variant:
            serve(Pipeline(model, read_texts(data), serve_variant, cpu_bf16))
            return
        if output is None:
            raise SetupError("--output is required: the result JSON")
        texts = read_texts(data)
        pipelines = {}
        if baseline_python:
            baseline = PipelineInPython(baseline_python, model, data, TOKEN_OBJECTS, code, cpu_bf16)
            pipelines[f"baseline Python: {TOKEN_OBJECTS}, spaCy {baseline.spacy_version}"] = baseline
        for variant in ARRAY_ALIGNMENT:
            pipeline = Pipeline(model, texts, variant, cpu_bf16)
            pipelines[f"{variant}, spaCy {pipeline.spacy_version}"] = pipeline
        words = sum(len(text.split()) for text in texts)
        annotations = {name: pipeline.entities() for name, pipeline in pipelines.items()}  # also warms up
        same_entities, confidence_difference = agreement(annotations)
        seconds: Dict[str, List[float]] = {name: [] for name in pipelines}
        components: Dict[str, List[Dict[str, float]]] = {name: [] for name in pipelines}
        for _ in range(repetitions):
            for name, pipeline in pipelines.items():
                wall, by_component = pipeline.repetition()
                seconds[name].append(wall)
                components[name].append(by_component)
        if baseline_python:
            baseline.close()
        median_components = {
            name: {c: statistics.median(r[c] for r in runs) for c in runs[0]} for name, runs in components.items()
        }
        words_per_second = {name: round(words / statistics.median(s), 1) for name, s in seconds.items()}
        after = list(pipelines)[-1]
        result = {
            "words": words,
            "texts": len(texts),
            "repetitions": repetitions,
            "machine": machine_info(),
            "cpu_bf16": cpu_bf16,
            "baseline_python": str(baseline_python) if baseline_python else None,
            "same_entities": same_entities,
            "max_confidence_difference": confidence_difference,
            "seconds": seconds,
            "words_per_second": words_per_second,
            "components_seconds": median_components,
            "ratios": {
                before: {
                    "words_per_second": round(words_per_second[after] / words_per_second[before], 3),
                    **{
                        c: round(median_components[after][c] / median_components[before][c], 3)
                        if median_components[before][c]
                        else None
                        for c in median_components[after]
                    },
                }
                for before in list(pipelines)[:-1]
            },
        }
        atomic_write_text(output, json.dumps(result, indent=2) + "\n")
        if report:
            replace_between_markers(benchmarks_md, START, END, results_table(result))
        typer.echo(results_table(result))
        if not same_entities or confidence_difference > CONFIDENCE_TOLERANCE:
            typer.echo(
                f"Error: the variants gave different entities, or confidences more than {CONFIDENCE_TOLERANCE} apart",
                err=True,
            )
            raise typer.Exit(1)


if __name__ == "__main__":
    app()
