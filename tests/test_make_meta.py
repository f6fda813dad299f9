"""The model card's backbone: what was trained, found in the pipeline, never a default name."""

import shutil

from scripts.make_meta import local_model_card_license, trained_backbone


def test_backbone_from_a_hub_name_in_the_config(project, tmp_path):
    """A pipeline trained from a hub name is named by it and linked to its hub page; the size still
    comes from the weights stored in the pipeline."""
    pipeline = tmp_path / "pipeline"
    shutil.copytree(project / "training/model-best", pipeline)
    config = (pipeline / "config.cfg").read_text()
    trained_from = next(line for line in config.splitlines() if line.startswith("name = ") and "tiny" in line)
    (pipeline / "config.cfg").write_text(config.replace(trained_from, 'name = "acme/ner-base-cased"'))
    backbone = trained_backbone(pipeline)
    assert backbone["name"] == backbone["trained_name"] == "acme/ner-base-cased"
    assert backbone["url"] == "https://huggingface.co/acme/ner-base-cased"
    assert (backbone["model_type"], backbone["layers"], backbone["hidden"], backbone["cased"]) == (
        "distilbert",
        1,
        32,
        True,
    )
    assert backbone["license"] is None


def test_backbone_from_a_local_directory(project, tiny_transformer):
    backbone = trained_backbone(project / "training/model-best")
    assert backbone["name"] == tiny_transformer.name and backbone["url"] is None
    assert backbone["trained_name"] == str(tiny_transformer)


def test_license_from_the_model_cards_front_matter(tmp_path):
    (tmp_path / "README.md").write_text(
        "---\nlanguage: en\nlicense: apache-2.0\ntags:\n- x\n---\n# A model\nlicense: mit\n"
    )
    assert local_model_card_license(tmp_path) == "apache-2.0"
    (tmp_path / "README.md").write_text("# A model without front matter\nlicense: mit\n")
    assert local_model_card_license(tmp_path) is None
    assert local_model_card_license(tmp_path / "missing") is None


def test_the_card_gives_the_recipes_f1_over_seeds(project, tmp_path):
    """--seed-scores: the variant's mean and spread from bench-ablation-score's JSON reach the card;
    a variant it lacks is a one-line error that names the option and lists what it has."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    spread = {"mean": 0.8912, "std": 0.0021, "min": 0.8890, "max": 0.8933, "n": 3}
    results = tmp_path / "ablation.json"
    results.write_text(
        json.dumps({"variants": {"averages": {"seeds": [0, 1, 2], "test_f1": spread, "dev_f1": spread}}})
    )

    def make_meta(variant):
        return subprocess.run(
            [sys.executable, "-m", "scripts.make_meta", str(project / "training/model-release")]
            + [str(project / "metrics/test.json"), str(tmp_path / variant), "--name", "t", "--version", "0.0.1"]
            + ["--seed-scores", str(results), "--seed-variant", variant],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )

    assert make_meta("averages").returncode == 0
    meta = json.loads((tmp_path / "averages" / "meta.json").read_text())
    assert meta["test_performance_over_seeds"]["test_f1"] == spread
    assert "over 3 seeds" in meta["notes"] and "**0.8912 ± 0.0021**" in meta["notes"]
    assert "0.8890–0.8933" in (tmp_path / "averages" / "README.md").read_text()
    missing = make_meta("baseline")
    assert missing.returncode == 1 and not (tmp_path / "baseline").exists()
    assert missing.stderr.strip().splitlines() == [
        f"Error: --seed-variant 'baseline': not in {results}; it has averages."
    ]
