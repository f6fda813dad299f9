"""bench-ablation: the README's CPU recipe (the stand-in backbone, bf16 where the CPU has it) with one
change a variant, trained on the full training split. `train VARIANT --seed S` trains one run into
benchmarks/runs/ablation/<variant>-seed<S>/ (a variant with other Docs converts its own corpus
first); `score` measures every finished run: dev and test seqeval F1 with the per-type table, the
training seconds, and the inference words/s of all the runs' models in one process, taking turns on
the same test texts. Each run's commands go into benchmarks/results/<name>.json with its figures.
"""

import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import spacy
import typer
from spacy.tokens import DocBin
from spacy.training import Corpus
from weasel.util import load_project_config

from benchmarks.benchmark_speed import machine_info
from scripts.project_util import atomic_write_text, load_pipeline, replace_between_markers

app = typer.Typer(add_completion=False)

RUNS = Path("benchmarks/runs/ablation")


def project_code() -> str:
    """project.yml's vars.code: the model_code files that register the pipeline's functions."""
    return load_project_config(Path("."))["vars"]["code"]


class Variant(NamedTuple):
    """One change to the README's recipe: sentences per Doc, and config overrides."""

    help: str
    n_sents: int = 10
    overrides: Dict[str, str] = {}


# The README's CPU recipe: project.yml's bench_* settings.
RECIPE = {
    "--cpu-bf16": "auto",
    "--max-steps": "750",
    "--eval-frequency": "150",
    "--learn-rate": "2e-4",
    "--warmup-steps": "90",
    "--batch-size": "1000",
}

VARIANTS = {
    "baseline": Variant("the README's recipe: 10 sentences a Doc, windows of 128 tokens, no averages"),
    "whole-articles": Variant("a Doc is a whole article (all its sentences)", n_sents=1000),
    "averages": Variant(
        "parameter averaging: thinc's moving average of every weight, the transformer's included",
        overrides={"--training.optimizer.use_averages": "true"},
    ),
    "overlap-96": Variant(
        "windows of 128 tokens every 96: each token sees context on both sides",
        overrides={"--components.transformer.model.get_spans.stride": "96"},
    ),
    "window-256": Variant(
        "windows of 256 tokens (128), no overlap: fewer window edges",
        overrides={
            "--components.transformer.model.get_spans.window": "256",
            "--components.transformer.model.get_spans.stride": "256",
        },
    ),
    "ner-width-128": Variant(
        "the NER's hidden width 128 (64)", overrides={"--components.ner.model.hidden_width": "128"}
    ),
    "steps-900": Variant(
        "900 steps (750), warm-up 108 (90): the same learning-rate shape, 1.2x the steps",
        overrides={"--max-steps": "900", "--warmup-steps": "108", "--eval-frequency": "180"},
    ),
}


def corpus_dir(n_sents: int) -> Path:
    return Path("corpus") if n_sents == 10 else RUNS / f"corpus-n{n_sents}"


def convert_command(conll_dir: Path, n_sents: int) -> List[str]:
    return [
        sys.executable,
        "-m",
        "scripts.convert",
        str(corpus_dir(n_sents)),
        "--conll-dir",
        str(conll_dir),
        "--n-sents",
        str(n_sents),
    ]


def train_command(variant: Variant, run_dir: Path, transformer: str, seed: int, corpus: Path) -> List[str]:
    options = {
        **RECIPE,
        "--output": str(run_dir / "training"),
        "--code": project_code(),
        "--gpu-id": "-1",
        "--train": str(corpus / "train.spacy"),
        "--dev": str(corpus / "dev.spacy"),
        "--transformer": transformer,
        "--system.seed": str(seed),
        **variant.overrides,
    }
    return [sys.executable, "-m", "scripts.train", "configs/ner_transformer.cfg"] + [
        part for key, value in options.items() for part in (key, value)
    ]


@app.callback()
def commands():
    """Train the variants of the README's recipe, then score them side by side."""


@app.command()
def train(
    variant_name: str = typer.Argument(..., help=f"One of: {', '.join(VARIANTS)}"),
    seed: int = typer.Option(0, help="system.seed"),
    conll_dir: Path = typer.Option(Path("../shared/data/conll2003"), help="CoNLL-2003's files"),
    transformer: str = typer.Option("assets/all-MiniLM-L6-v2", help="The backbone"),
):
    """Train one variant with one seed (converting its corpus first where its Docs differ)."""
    if variant_name not in VARIANTS:
        raise typer.BadParameter(f"unknown variant {variant_name!r}; the variants: {', '.join(VARIANTS)}")
    variant = VARIANTS[variant_name]
    run_dir = RUNS / f"{variant_name}-seed{seed}"
    corpus = corpus_dir(variant.n_sents)
    commands = []
    if not (corpus / "test.spacy").exists():
        commands.append(convert_command(conll_dir, variant.n_sents))
    commands.append(train_command(variant, run_dir, transformer, seed, corpus))
    run_dir.mkdir(parents=True, exist_ok=True)
    for command in commands:
        print(shlex.join(command), flush=True)
        subprocess.run(command, check=True)
    record = {
        "variant": variant_name,
        "help": variant.help,
        "seed": seed,
        "corpus": str(corpus),
        "commands": [shlex.join(["python", *command[1:]]) for command in commands],
    }
    atomic_write_text(run_dir / "run.json", json.dumps(record, indent=2))


class Run(NamedTuple):
    name: str
    variant: str
    seed: int
    path: Path
    corpus: Path


def finished_runs() -> List[Run]:
    runs = []
    for record_path in sorted(RUNS.glob("*-seed*/run.json")):
        record = json.loads(record_path.read_text())
        if (record_path.parent / "training" / "model-best").exists():
            path = record_path.parent
            runs.append(Run(path.name, record["variant"], record["seed"], path, Path(record["corpus"])))
    return runs


def split_scores(nlp: spacy.Language, path: Path) -> Dict[str, object]:
    # As the evaluate step and spaCy's training read them: the gold words, not the text tokenized again.
    scores = nlp.evaluate(list(Corpus(path)(nlp)))
    return {
        "f1": scores["seqeval_f"],
        "p": scores["seqeval_p"],
        "r": scores["seqeval_r"],
        "per_type_f1": {label: s["f"] for label, s in scores["seqeval_per_type"].items()},
    }


def words_per_second(models: Dict[str, spacy.Language], texts: List[str], repetitions: int) -> Dict[str, float]:
    """Each model's nlp.pipe over TEXTS, the models taking turns; the median of the repetitions."""
    words = sum(len(text.split()) for text in texts)
    seconds: Dict[str, List[float]] = {name: [] for name in models}
    for _ in range(repetitions):
        for name, nlp in models.items():
            start = time.perf_counter()
            for _ in nlp.pipe(texts):
                pass
            seconds[name].append(time.perf_counter() - start)
    return {name: round(words / statistics.median(times), 1) for name, times in seconds.items()}


def beside_baseline(results: Dict[str, Dict[str, object]], spans: Dict[str, tuple]) -> Dict[str, Optional[float]]:
    """Each run's training seconds over the mean of the baseline runs that trained at the same time
    (on the same machine, sharing it alike); None where no baseline ran beside it."""
    ratios: Dict[str, Optional[float]] = {}
    for name, result in results.items():
        start, end = spans[name]
        beside = [
            other["train_seconds"]
            for other_name, other in results.items()
            if other["variant"] == "baseline"
            and other_name != name
            and spans[other_name][0] < end
            and start < spans[other_name][1]
        ]
        ratios[name] = round(result["train_seconds"] / statistics.mean(beside), 3) if beside else None
    return ratios


def f1_cell(scores: Dict[str, float]) -> str:
    return f"{scores['mean']:.4f}" if scores["n"] == 1 else f"{scores['mean']:.4f} ± {scores['std']:.4f}"


def markdown_table(by_variant: Dict[str, Dict[str, object]]) -> str:
    baseline_speed = by_variant.get("baseline", {}).get("words_per_second")
    labels = sorted(next(iter(by_variant.values()))["test_per_type_f1"])
    rows = [
        "| variant | seeds | dev F1 | test F1 | "
        + " | ".join(f"test {label}" for label in labels)
        + " | training time ÷ the baseline beside it | words/s |",
        "|---" * (6 + len(labels)) + "|",
    ]
    for variant, v in by_variant.items():
        ratio = v["train_time_beside_baseline"]
        speed = f"{v['words_per_second']:,.0f}" + (
            f" ({v['words_per_second'] / baseline_speed:.2f}×)" if baseline_speed and variant != "baseline" else ""
        )
        rows.append(
            f"| {variant} | {', '.join(map(str, v['seeds']))} | {f1_cell(v['dev_f1'])} | "
            f"{f1_cell(v['test_f1'])} | "
            + " | ".join(f"{v['test_per_type_f1'][label]:.3f}" for label in labels)
            + f" | {'—' if ratio is None else f'{ratio:.2f}×'} | {speed} |"
        )
    return "\n".join(rows)


def spread(values: List[float]) -> Dict[str, float]:
    return {
        "mean": round(statistics.mean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


@app.command()
def score(
    name: str = typer.Argument(..., help="The results go to benchmarks/results/<name>.json"),
    repetitions: int = typer.Option(3, help="Speed repetitions per model (the median counts)"),
    speed_texts: Path = typer.Option(Path("corpus/test.spacy"), help="The texts all models are timed on"),
    markdown: Optional[Path] = typer.Option(
        None, help="Also write the table between <!-- ablation:start --> and <!-- ablation:end --> in this file"
    ),
):
    """Score every finished run on its dev and test splits, time each variant's first run, and write the
    results with each run's commands."""
    runs = finished_runs()
    results: Dict[str, Dict[str, object]] = {}
    spans: Dict[str, tuple] = {}
    models: Dict[str, spacy.Language] = {}
    for run in runs:
        nlp = load_pipeline(str(run.path / "training" / "model-best"))
        timing = json.loads((run.path / "training" / "train_time.json").read_text())
        finished = (run.path / "training" / "train_time.json").stat().st_mtime
        record = json.loads((run.path / "run.json").read_text())
        results[run.name] = {
            **record,
            "dev": split_scores(nlp, run.corpus / "dev.spacy"),
            "test": split_scores(nlp, run.corpus / "test.spacy"),
            "train_seconds": timing["train_seconds"],
            "wall_seconds": timing["wall_seconds"],
            "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime(finished - timing["wall_seconds"])),
            "finished": time.strftime("%Y-%m-%d %H:%M", time.gmtime(finished)),
        }
        spans[run.name] = (finished - timing["wall_seconds"], finished)
        print(run.name, results[run.name]["dev"]["f1"], results[run.name]["test"]["f1"], flush=True)
        if run.variant not in {r.variant for r in runs if r.name in models}:
            models[run.name] = nlp
    nlp = next(iter(models.values()))
    texts = [doc.text for doc in DocBin().from_disk(speed_texts).get_docs(nlp.vocab)]
    speeds = words_per_second(models, texts, repetitions)
    ratios = beside_baseline(results, spans)
    for run_name, ratio in ratios.items():
        results[run_name]["train_time_beside_baseline"] = ratio
    by_variant: Dict[str, Dict[str, object]] = {}
    for variant in dict.fromkeys(run.variant for run in runs):
        mine = [results[run.name] for run in runs if run.variant == variant]
        by_variant[variant] = {
            "help": VARIANTS[variant].help,
            "seeds": [r["seed"] for r in mine],
            "dev_f1": spread([r["dev"]["f1"] for r in mine]),
            "test_f1": spread([r["test"]["f1"] for r in mine]),
            "test_per_type_f1": {
                label: round(statistics.mean(r["test"]["per_type_f1"][label] for r in mine), 4)
                for label in mine[0]["test"]["per_type_f1"]
            },
            "train_seconds": spread([r["train_seconds"] for r in mine]),
            "train_time_beside_baseline": (
                round(statistics.mean(known), 3)
                if (known := [r["train_time_beside_baseline"] for r in mine if r["train_time_beside_baseline"]])
                else None
            ),
            "words_per_second": next(speeds[run.name] for run in runs if run.variant == variant and run.name in speeds),
        }
    output = {
        "name": name,
        "machine": machine_info(),
        "speed": {"texts": len(texts), "source": str(speed_texts), "repetitions": repetitions},
        "variants": by_variant,
        "runs": results,
    }
    atomic_write_text(Path("benchmarks/results") / f"{name}.json", json.dumps(output, indent=2))
    if markdown:
        replace_between_markers(
            markdown, "<!-- ablation:start -->", "<!-- ablation:end -->", markdown_table(by_variant)
        )


if __name__ == "__main__":
    app()
