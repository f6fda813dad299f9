"""Train the pipeline with `spacy train`, on a GPU when gpu_id >= 0 (with fp16 mixed
precision) and on the CPU otherwise. Extra `--section.key value` arguments override the config,
as with `spacy train`. Writes the wall time to <output_dir>/train_time.json."""
import json
import time
from pathlib import Path

import typer
from spacy.cli._util import parse_config_overrides
from spacy.cli.train import train as spacy_train

from project_util import import_code_paths

app = typer.Typer(add_completion=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def main(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training config"),
    output_dir: Path = typer.Option(..., "--output", "-o", help="Where model-last and model-best go"),
    code_paths: str = typer.Option(..., "--code", "-c", help="Comma-separated Python files with registered functions"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for the CPU"),
):
    import_code_paths(code_paths)
    overrides = parse_config_overrides(ctx.args)
    if gpu_id >= 0:
        overrides.setdefault("components.transformer.model.mixed_precision", True)
    start = time.perf_counter()
    spacy_train(config_path, output_dir, use_gpu=gpu_id, overrides=overrides)
    seconds = time.perf_counter() - start
    (output_dir / "train_time.json").write_text(json.dumps({"train_seconds": round(seconds, 1), "gpu_id": gpu_id}))


if __name__ == "__main__":
    app()
