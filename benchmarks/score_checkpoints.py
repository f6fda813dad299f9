"""Score every checkpoint a training kept (train.py --keep-checkpoints: step-<N> directories) on a
split with the pipeline's seqeval scorer, and write the test F1 curve against the training's wall
time (from its train_log.jsonl), so the benchmark can say when ours passes the reference."""

import json
from pathlib import Path

import spacy
import typer
from spacy.training import Corpus

from scripts.project_util import atomic_write_text, import_code_paths

app = typer.Typer(add_completion=False)


@app.command()
def main(
    checkpoints: Path = typer.Argument(..., exists=True, file_okay=False, help="Directory of step-<N> pipelines"),
    data_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="DocBin (.spacy) to score"),
    train_log: Path = typer.Option(..., exists=True, dir_okay=False, help="The training's train_log.jsonl"),
    output_path: Path = typer.Option(..., "--output", "-o", help="JSON list: step, seconds, dev F1, F1 on DATA_PATH"),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files with registered functions"),
):
    import_code_paths(code_paths)
    logged = {line["step"]: line for line in map(json.loads, train_log.read_text().splitlines())}
    steps = sorted(int(path.name.split("-", 1)[1]) for path in checkpoints.glob("step-*"))
    missing = [step for step in steps if step not in logged]
    if missing:
        raise typer.BadParameter(f"{train_log}: no line for the checkpoints of steps {missing}")
    curve = []
    for step in steps:
        nlp = spacy.load(checkpoints / f"step-{step}", config={"components.transformer.model.cpu_bf16": False})
        scores = nlp.evaluate(list(Corpus(str(data_path))(nlp)))
        curve.append(
            {
                "step": step,
                "seconds": logged[step]["seconds"],
                "dev_f1": logged[step]["scores"].get("seqeval_f"),
                "f1": scores["seqeval_f"],
            }
        )
        typer.echo(f"step {step}: {logged[step]['seconds']:.0f} s, F1 {scores['seqeval_f']:.4f}")
    atomic_write_text(output_path, json.dumps(curve, indent=2) + "\n")


if __name__ == "__main__":
    app()
