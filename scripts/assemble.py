"""Assemble the release pipeline: the trained pipeline plus the "entity_confidence" component
after its NER, so that every entity carries `ent._.confidence`."""

from pathlib import Path

import spacy
import typer

from scripts.project_util import import_code_paths

app = typer.Typer(add_completion=False)


@app.command()
def main(
    model_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Trained pipeline (model-best)"),
    output_dir: Path = typer.Argument(..., help="Where to save the release pipeline"),
    code_paths: str = typer.Option(..., "--code", "-c", help="Comma-separated Python files with registered functions"),
):
    import_code_paths(code_paths)
    nlp = spacy.load(model_dir)
    nlp.add_pipe("entity_confidence", after="ner")
    nlp.to_disk(output_dir)


if __name__ == "__main__":
    app()
