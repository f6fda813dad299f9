"""bench-overhead's script on the tiny test pipeline: the variants run, agree, and are reported."""

import json
import subprocess
import sys

import pytest
import spacy
from conftest import CODE, run_checked

TOKEN_OBJECTS = f"spacy-transformers (Token objects), spaCy {spacy.__version__}"
FROM_ARRAYS = f"from arrays, spaCy {spacy.__version__}"


def overhead_command(output, *options):
    return [
        sys.executable,
        "-m",
        "benchmarks.benchmark_overhead",
        "training/model-release",
        "corpus/test.spacy",
        "--output",
        str(output),
        "--code",
        CODE,
        "--repetitions",
        "1",
        *options,
    ]


def test_overhead_benchmark_reports_both_variants(project, tmp_path):
    benchmarks_md = tmp_path / "BENCHMARKS.md"
    benchmarks_md.write_text("# B\n\n<!-- overhead:start -->\nold\n<!-- overhead:end -->\nkept\n")
    output = tmp_path / "overhead.json"
    run_checked(overhead_command(output, "--benchmarks-md", str(benchmarks_md)), cwd=project)
    result = json.loads(output.read_text())
    assert result["same_entities"] is True and result["max_confidence_difference"] < 1e-5
    assert list(result["words_per_second"]) == [TOKEN_OBJECTS, FROM_ARRAYS]
    assert all(v > 0 for v in result["words_per_second"].values())
    assert list(result["components_seconds"][FROM_ARRAYS]) == ["tokenizer", "transformer", "ner", "entity_confidence"]
    assert result["words"] > 0 and result["repetitions"] == 1 and len(result["seconds"][FROM_ARRAYS]) == 1
    assert list(result["ratios"]) == [TOKEN_OBJECTS]
    text = benchmarks_md.read_text()
    assert "old" not in text and text.endswith("kept\n") and f"| {FROM_ARRAYS} |" in text
    assert f"**from arrays ÷ {TOKEN_OBJECTS}**" in text


def test_baseline_python_runs_the_token_objects_there(project, tmp_path):
    # This interpreter stands in for another environment: the variant runs in a subprocess all the same.
    output = tmp_path / "overhead.json"
    run_checked(overhead_command(output, "--baseline-python", sys.executable, "--no-report"), cwd=project)
    result = json.loads(output.read_text())
    baseline = f"baseline Python: {TOKEN_OBJECTS}"
    assert list(result["words_per_second"]) == [baseline, TOKEN_OBJECTS, FROM_ARRAYS]
    assert list(result["ratios"]) == [baseline, TOKEN_OBJECTS]
    assert len(result["seconds"][baseline]) == 1 and result["components_seconds"][baseline]["ner"] > 0
    assert result["same_entities"] is True and result["max_confidence_difference"] < 1e-5
    assert result["baseline_python"] == sys.executable


def test_a_baseline_python_that_cannot_run_it_is_a_one_line_error(project, tmp_path):
    broken_python = tmp_path / "python"
    broken_python.write_text("#!/bin/sh\necho 'No module named spacy' >&2\nexit 1\n")
    broken_python.chmod(0o755)
    output = tmp_path / "overhead.json"
    finished = subprocess.run(
        overhead_command(output, "--baseline-python", str(broken_python), "--no-report"),
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert finished.returncode == 1 and not output.exists()
    assert f"Error: the benchmark stopped in {broken_python}" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_agreement_needs_the_same_entities_and_measures_the_confidences():
    from benchmarks.benchmark_overhead import agreement

    ours = [[(0, 4, "PER", 0.9)], []]
    # As the baseline Python's JSON gives them: lists, not tuples.
    assert agreement({"a": ours, "b": [[[0, 4, "PER", 0.9 + 2e-7]], []]}) == (True, pytest.approx(2e-7))
    assert agreement({"a": ours, "b": [[[0, 4, "ORG", 0.9]], []]}) == (False, None)
    assert agreement({"a": ours, "b": [[], [[0, 4, "PER", 0.9]]]}) == (False, None)
