"""Write the meta.json that `spacy package --meta-path` uses: the trained pipeline's meta, plus
the requirements of the bundled --code (spaCy does not detect those) and the test-split scores."""
import json
from importlib.metadata import version
from pathlib import Path
from typing import List

import typer
from packaging.requirements import Requirement

from project_util import atomic_write_text

app = typer.Typer(add_completion=False)


@app.command()
def main(
    model_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Trained pipeline (model-best)"),
    test_scores: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON written by evaluate.py"),
    output_path: Path = typer.Argument(..., help="Where to write the package meta.json"),
    requirement: List[str] = typer.Option(["seqeval"], "--requirement", "-r", help="Package the bundled code needs"),
    description: str = typer.Option("", help="One line for the package description"),
):
    meta = json.loads((model_dir / "meta.json").read_text(encoding="utf-8"))
    requirements = meta.setdefault("requirements", [])
    present = {Requirement(req).name for req in requirements}
    requirements += [f"{name}>={version(name)}" for name in requirement if name not in present]
    meta["test_performance"] = json.loads(test_scores.read_text(encoding="utf-8"))
    if description:
        meta["description"] = description
    atomic_write_text(output_path, json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    app()
