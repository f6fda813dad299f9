"""The real workflow end to end, offline: convert -> train on the CPU -> assemble -> evaluate ->
package -> install the wheel -> spacy.load("en_conll_distilbert") -> doc.ents."""
import json

import yaml
from conftest import ROOT, project_run_all, run_in_clean_process


def test_workflow_outputs(project):
    for path in ("corpus/train.spacy", "corpus/dev.spacy", "corpus/test.spacy", "training/model-best/meta.json",
                 "training/model-release/meta.json", "metrics/test.json", "metrics/test.md",
                 "metrics/test_sample.html"):
        assert (project / path).is_file(), path
    scores = json.loads((project / "metrics/test.json").read_text())
    assert set(scores["seqeval_per_type"]) == {"PER", "ORG", "LOC", "MISC"}
    # The sample data is easy: 60 steps must teach even the 1-layer model most entities.
    assert scores["seqeval_f"] > 0.6
    assert "| **overall** |" in (project / "metrics/test.md").read_text()
    confidence = scores["confidence"]
    assert confidence["n_correct"] > 0
    assert sum(b["entities"] for b in confidence["bins"]) == confidence["n_correct"] + confidence["n_wrong"]
    assert 0.0 <= confidence["mean_confidence_correct"] <= 1.0
    train_time = json.loads((project / "training/train_time.json").read_text())
    assert train_time["train_seconds"] > 0 and train_time["gpu_id"] == -1


def test_model_selection_uses_the_seqeval_scorer(project):
    meta = json.loads((project / "training/model-best/meta.json").read_text())
    assert "seqeval_f" in meta["performance"] and "seqeval_per_type" in meta["performance"]
    config = (project / "training/model-best/config.cfg").read_text()
    assert '@scorers = "conll.seqeval_ner_scorer.v1"' in config


def test_rerun_skips_finished_steps(project, tiny_transformer, conll_dir):
    result = project_run_all(project, tiny_transformer, conll_dir)
    assert result.stdout.count("Skipping") == 5, result.stdout


def test_installed_package_loads_anywhere(installed_model):
    info = run_in_clean_process(installed_model, """
import json, sys, spacy
nlp = spacy.load("en_conll_distilbert")
doc = nlp("Bill Gates visited Microsoft in Seattle on Monday . Angela Merkel met Reuters in London .")
assert not any(p.endswith("scripts") for p in sys.path)
print(json.dumps({
    "pipeline": nlp.pipe_names,
    "labels": sorted(nlp.get_pipe("ner").labels),
    "ents": [(e.text, e.label_, e._.confidence) for e in doc.ents],
    "text_ok": all(doc.text[e.start_char:e.end_char] == e.text for e in doc.ents),
    "requirements": nlp.meta["requirements"],
    "performance": sorted(nlp.meta["performance"]),
    "test_f": nlp.meta["test_performance"]["seqeval_f"],
    "scorer": nlp.get_pipe("ner").scorer.__module__,
}))
""")
    assert info["pipeline"] == ["transformer", "ner", "entity_confidence"]
    assert info["labels"] == ["LOC", "MISC", "ORG", "PER"]
    assert ("Bill Gates", "PER") in [(text, label) for text, label, _ in info["ents"]]
    assert all(0.0 <= confidence <= 1.0 for _, _, confidence in info["ents"])
    assert info["text_ok"]
    assert any(req.startswith("seqeval") for req in info["requirements"])
    assert any(req.startswith("spacy-transformers") for req in info["requirements"])
    assert "seqeval_f" in info["performance"]
    assert info["test_f"] > 0.6
    assert info["scorer"] == "en_conll_distilbert.seqeval_scorer"


def test_confidence_can_be_switched_off(installed_model):
    info = run_in_clean_process(installed_model, """
import json, spacy
text = "Bill Gates visited Microsoft in Seattle on Monday ."
with_conf = spacy.load("en_conll_distilbert")(text)
without = spacy.load("en_conll_distilbert", exclude=["entity_confidence"])(text)
print(json.dumps({
    "with": [(e.start_char, e.end_char, e.label_) for e in with_conf.ents],
    "without": [(e.start_char, e.end_char, e.label_) for e in without.ents],
    "confidences_off": [e._.confidence for e in without.ents],
}))
""")
    assert info["with"] == info["without"] and info["with"]
    assert info["confidences_off"] == [None] * len(info["without"])


def test_defaults_are_distilbert_on_gpu_from_the_hub():
    """Without overrides the workflow fine-tunes distilbert-base-cased on GPU 0 from the hub
    dataset; the end-to-end tests above run that same config and commands, offline."""
    project_vars = yaml.safe_load((ROOT / "project.yml").read_text())["vars"]
    assert project_vars["transformer"] == "distilbert-base-cased"
    assert project_vars["gpu_id"] == 0 and project_vars["conll_dir"] == ""
    assert (project_vars["hub_id"], project_vars["hub_revision"]) == ("eriktks/conll2003", "refs/convert/parquet")
