"""bench-ablation: a variant is the README's recipe with its one change, and score reports each run's
dev and test seqeval scores as spaCy's evaluation of that run's model gives them."""

import json
import shutil

import spacy
from conftest import ROOT, import_model_code
from spacy.training import Corpus
from typer.testing import CliRunner

from benchmarks import ablation


def test_a_variant_is_the_recipe_with_its_change_and_its_seed():
    baseline = ablation.train_command(ablation.VARIANTS["baseline"], ablation.RUNS / "b", "backbone", 0, ablation.RUNS)
    steps = ablation.train_command(ablation.VARIANTS["steps-900"], ablation.RUNS / "s", "backbone", 2, ablation.RUNS)

    def options(command):
        return dict(zip(command[4::2], command[5::2]))

    assert options(baseline)["--max-steps"] == "750" and options(steps)["--max-steps"] == "900"
    assert options(steps)["--system.seed"] == "2" and options(baseline)["--learn-rate"] == "2e-4"
    changed = {key for key in options(steps) if options(steps)[key] != options(baseline).get(key)}
    assert changed == {"--max-steps", "--warmup-steps", "--eval-frequency", "--system.seed", "--output"}
    assert ablation.corpus_dir(ablation.VARIANTS["whole-articles"].n_sents) != ablation.corpus_dir(10)


def test_score_reports_each_runs_dev_and_test_scores(project, tmp_path, monkeypatch):
    import_model_code()
    run = tmp_path / ablation.RUNS / "baseline-seed0"
    (run / "training").mkdir(parents=True)
    shutil.copytree(project / "training" / "model-best", run / "training" / "model-best")
    (run / "training" / "train_time.json").write_text('{"train_seconds": 12.5, "wall_seconds": 14.0, "gpu_id": -1}')
    (run / "run.json").write_text(json.dumps({"variant": "baseline", "seed": 0, "corpus": "corpus", "commands": []}))
    shutil.copytree(project / "corpus", tmp_path / "corpus")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    shutil.copytree(ROOT / "model_code", tmp_path / "model_code")
    (tmp_path / "B.md").write_text("# B\n<!-- ablation:start -->\nold\n<!-- ablation:end -->\nkept\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(ablation.app, ["score", "tiny-ablation", "--repetitions", "1", "--markdown", "B.md"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "benchmarks" / "results" / "tiny-ablation.json").read_text())
    nlp = spacy.load(run / "training" / "model-best")
    for split in ("dev", "test"):
        scores = nlp.evaluate(list(Corpus(tmp_path / "corpus" / f"{split}.spacy")(nlp)))
        assert results["runs"]["baseline-seed0"][split]["f1"] == scores["seqeval_f"]
        assert results["runs"]["baseline-seed0"][split]["per_type_f1"] == {
            label: s["f"] for label, s in scores["seqeval_per_type"].items()
        }
    variant = results["variants"]["baseline"]
    assert variant["test_f1"]["mean"] == round(scores["seqeval_f"], 4) and variant["test_f1"]["n"] == 1
    assert variant["train_seconds"]["mean"] == 12.5 and variant["words_per_second"] > 0
    assert variant["train_time_beside_baseline"] is None  # no other baseline trained beside it
    table = (tmp_path / "B.md").read_text().splitlines()
    assert table[0] == "# B" and table[-1] == "kept" and "old" not in table
    row = next(line for line in table if line.startswith("| baseline | "))
    assert f"| {variant['test_f1']['mean']:.4f} |" in row and "| — |" in row


def test_training_time_is_compared_with_the_baselines_that_trained_beside_it():
    results = {
        "baseline-seed1": {"variant": "baseline", "train_seconds": 100.0},
        "baseline-seed2": {"variant": "baseline", "train_seconds": 120.0},
        "overlap-96-seed1": {"variant": "overlap-96", "train_seconds": 121.0},
        "window-256-seed0": {"variant": "window-256", "train_seconds": 90.0},
    }
    spans = {
        "baseline-seed1": (0, 10),
        "baseline-seed2": (2, 12),
        "overlap-96-seed1": (1, 13),
        "window-256-seed0": (20, 30),
    }
    ratios = ablation.beside_baseline(results, spans)
    assert ratios["overlap-96-seed1"] == 1.1  # 121 / mean(100, 120)
    assert ratios["baseline-seed1"] == round(100 / 120, 3)  # the other baseline, not itself
    assert ratios["window-256-seed0"] is None
