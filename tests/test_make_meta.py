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
