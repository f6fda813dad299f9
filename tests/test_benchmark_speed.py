"""bench-speed's script on the tiny test pipeline: the variants asked for run, spacy-transformers'
own batching among them, and the HF pipeline finds entities with a head of the data's tags."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import CODE, run_checked


def speed_command(backbone: Path, output: Path, *options: str) -> list:
    """bench-speed on the test project's release pipeline, with the tiny transformer as the HF side."""
    return [
        sys.executable,
        "-m",
        "benchmarks.benchmark_speed",
        "training/model-release",
        "corpus/test.spacy",
        str(backbone),
        "--output",
        str(output),
        "--code",
        CODE,
        *options,
    ]


def test_speed_benchmark_runs_the_variants_asked_for(project, tiny_transformer, tmp_path):
    output = tmp_path / "speed.json"
    variants = ["ours_fp32", "ours_fp32_token_objects", "hf_pipeline_fp32"]
    run_checked(
        speed_command(tiny_transformer, output, "--repetitions", "1", "--token-objects", "--only", ",".join(variants)),
        cwd=project,
    )
    result = json.loads(output.read_text())
    assert list(result["words_per_second"]) == variants and all(v > 0 for v in result["words_per_second"].values())
    assert all(len(seconds) == 1 for seconds in result["seconds"].values())
    assert list(result["components_fp32_seconds"]) == ["tokenizer", "transformer", "ner", "entity_confidence"]


def test_speed_benchmark_names_the_variants_when_one_is_unknown(project, tiny_transformer, tmp_path):
    result = subprocess.run(
        speed_command(tiny_transformer, tmp_path / "speed.json", "--only", "ours_fp64"),
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Error: --only: no variant ours_fp64; the variants: ours_fp32, ours_fp32_no_confidence," in result.stderr
    assert not (tmp_path / "speed.json").exists()
