"""The benchmark's test F1 curve: train.py --keep-checkpoints keeps the pipeline of every dev
evaluation, score_checkpoints.py scores each one, benchmark_report finds the crossing points."""

import json
import sys

import pytest
import spacy
from conftest import CODE, ROOT, run_checked
from spacy.training import Corpus

from benchmarks.benchmark_report import first_checkpoint_above, last_checkpoint_within, passes_test_f1


def test_every_evaluation_is_kept_and_scored(project, tiny_transformer, nlp, tmp_path):
    output = tmp_path / "training"
    checkpoints = output / "checkpoints"
    (checkpoints / "step-99").mkdir(parents=True)  # left by an earlier training
    run_checked(
        [
            sys.executable,
            "-m",
            "scripts.train",
            "configs/ner_transformer.cfg",
            "--output",
            str(output),
            "--code",
            CODE,
            "--train",
            str(project / "corpus/train.spacy"),
            "--dev",
            str(project / "corpus/dev.spacy"),
            "--transformer",
            str(tiny_transformer),
            "--max-steps",
            "6",
            "--eval-frequency",
            "3",
            "--learn-rate",
            "1e-3",
            "--warmup-steps",
            "1",
            "--batch-size",
            "300",
            "--keep-checkpoints",
            str(checkpoints),
        ],
        cwd=ROOT,
    )
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step-0", "step-3", "step-6"]
    curve_path = tmp_path / "test_curve.json"
    run_checked(
        [
            sys.executable,
            "-m",
            "benchmarks.score_checkpoints",
            str(checkpoints),
            str(project / "corpus/test.spacy"),
            "--train-log",
            str(output / "train_log.jsonl"),
            "--output",
            str(curve_path),
            "--code",
            CODE,
        ],
        cwd=ROOT,
    )
    curve = json.loads(curve_path.read_text())
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [point["step"] for point in curve] == [line["step"] for line in log] == [0, 3, 6]
    assert [point["seconds"] for point in curve] == [line["seconds"] for line in log]
    assert [point["dev_f1"] for point in curve] == [line["scores"]["seqeval_f"] for line in log]
    # The last checkpoint is the trained model: model-last's test F1.
    final = spacy.load(output / "model-last")
    assert curve[-1]["f1"] == pytest.approx(
        final.evaluate(list(Corpus(str(project / "corpus/test.spacy"))(final)))["seqeval_f"]
    )


def test_crossing_points_of_the_test_curve():
    curve = [
        {"step": 0, "seconds": 10.0, "f1": 0.1},
        {"step": 250, "seconds": 700.0, "f1": 0.84},
        {"step": 500, "seconds": 1300.0, "f1": 0.86},
        {"step": 750, "seconds": 1900.0, "f1": 0.88},
    ]
    assert first_checkpoint_above(curve, 0.85)["step"] == 500
    assert first_checkpoint_above(curve, 0.9) is None
    assert last_checkpoint_within(curve, 0.6 * 2700.0)["step"] == 500
    assert last_checkpoint_within(curve, 5.0) is None
    result = {
        "test_curve": curve,
        "reference_train_seconds": 2600.0,
        "ours_passes_reference_test_f1": first_checkpoint_above(curve, 0.85),
    }
    assert passes_test_f1(result) == "1300 s (0.50x), step 500, test F1 0.8600"
    assert passes_test_f1({**result, "ours_passes_reference_test_f1": None}) == "not in the kept checkpoints"
