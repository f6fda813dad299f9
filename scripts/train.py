"""Train the pipeline with `spacy train`, on a GPU when gpu_id >= 0 (with fp16 mixed
precision) and on the CPU otherwise. The options set the config values that the workflow's
variables control; extra `--section.key value` arguments override any other config value, as
with `spacy train`. Before any heavy work it checks that the GPU asked for can be used and that
the transformer can be loaded. Writes the time to <output_dir>/train_time.json (train_seconds: the
whole `spacy train` without the dev evaluations and checkpoints, as the reference Trainer's time is
taken; wall_seconds: all of it) and a JSONL line per dev evaluation to <output_dir>/train_log.jsonl
(scripts/training_log.py)."""

import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

import typer
from spacy import util
from spacy.cli._util import parse_config_overrides
from spacy.cli.train import train as spacy_train

from scripts import training_log  # noqa: F401  (registers the training logger)
from scripts.project_util import (
    Switch,
    atomic_write_text,
    check_transformer,
    import_code_paths,
    one_line_errors,
    resolve_switch,
    use_device,
)

app = typer.Typer(add_completion=False)


def settings_overrides(
    lang: Optional[str],
    transformer: Optional[str],
    cpu_bf16: Optional[Switch],
    max_steps: Optional[int],
    eval_frequency: Optional[int],
    learn_rate: Optional[float],
    warmup_steps: Optional[int],
    batch_size: Optional[int],
) -> Dict[str, Any]:
    """The config values behind the options; an option left out keeps the config's value."""
    overrides = {
        "nlp.lang": lang,
        "components.transformer.model.name": transformer,
        "components.transformer.model.cpu_bf16": resolve_switch(cpu_bf16),
        "training.max_steps": max_steps,
        # The schedule ends with the training, so that the learning rate decays to zero at the last step.
        "training.optimizer.learn_rate.total_steps": max_steps,
        "training.eval_frequency": eval_frequency,
        "training.optimizer.learn_rate.initial_rate": learn_rate,
        "training.optimizer.learn_rate.warmup_steps": warmup_steps,
        "training.batcher.size": batch_size,
    }
    return {key: value for key, value in overrides.items() if value is not None}


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def main(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training config"),
    output_dir: Path = typer.Option(..., "--output", "-o", help="Where model-last and model-best go"),
    code_paths: str = typer.Option(..., "--code", "-c", help="Comma-separated Python files with registered functions"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for the CPU"),
    train_path: Optional[Path] = typer.Option(None, "--train", exists=True, help="Training DocBin (paths.train)"),
    dev_path: Optional[Path] = typer.Option(None, "--dev", exists=True, help="Dev DocBin (paths.dev)"),
    lang: Optional[str] = typer.Option(None, help="spaCy language code of the pipeline (en, de, xx...)"),
    transformer: Optional[str] = typer.Option(None, help="Hub name or local save_pretrained directory"),
    cpu_bf16: Optional[Switch] = typer.Option(
        None, help="bf16 autocast for the transformer on the CPU (auto: where the CPU has AMX or AVX512-BF16)"
    ),
    max_steps: Optional[int] = typer.Option(None, help="Training steps; the learning rate reaches zero at the last"),
    eval_frequency: Optional[int] = typer.Option(None, help="Score dev every this many steps"),
    learn_rate: Optional[float] = typer.Option(None, help="Peak learning rate"),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear warm-up steps"),
    batch_size: Optional[int] = typer.Option(None, help="Padded words per batch"),
    keep_checkpoints: Optional[Path] = typer.Option(
        None, help="Keep the pipeline of every evaluation here, as step-<N> (for the benchmark's test F1 curve)"
    ),
):
    import_code_paths(code_paths)
    overrides = {
        **settings_overrides(
            lang, transformer, cpu_bf16, max_steps, eval_frequency, learn_rate, warmup_steps, batch_size
        ),
        **({"paths.train": str(train_path)} if train_path else {}),
        **({"paths.dev": str(dev_path)} if dev_path else {}),
        "training.logger.log_path": str(output_dir / "train_log.jsonl"),
        **({"training.logger.checkpoints": str(keep_checkpoints)} if keep_checkpoints else {}),
        **parse_config_overrides(ctx.args),
    }
    if gpu_id >= 0:
        overrides.setdefault("components.transformer.model.mixed_precision", True)
    config = util.load_config(config_path, overrides=overrides, interpolate=False)
    with one_line_errors():
        use_device(gpu_id)
        check_transformer(config["components"]["transformer"]["model"]["name"])
    if keep_checkpoints and keep_checkpoints.exists():
        shutil.rmtree(keep_checkpoints)  # a curve of this training only
    start = time.perf_counter()
    spacy_train(config_path, output_dir, use_gpu=gpu_id, overrides=overrides)
    seconds = time.perf_counter() - start
    log_lines = (output_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    scoring = json.loads(log_lines[-1])["scoring_seconds"] if log_lines else 0.0
    atomic_write_text(
        output_dir / "train_time.json",
        json.dumps({"train_seconds": round(seconds - scoring, 1), "wall_seconds": round(seconds, 1), "gpu_id": gpu_id}),
    )


if __name__ == "__main__":
    app()
