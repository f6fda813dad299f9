"""The real workflow end to end, offline: convert -> train on the CPU -> assemble -> calibrate ->
evaluate -> package -> install the wheel -> spacy.load("en_conll_distilbert") -> doc.ents, the
report, the model card."""

import html
import json
import re

import numpy
import yaml
from conftest import ROOT, project_run_all, rendered_dom, run_in_clean_process
from spacy.util import load_config

from model_code.entity_confidence import Calibration


def test_workflow_outputs(project):
    for path in (
        "corpus/train.spacy",
        "corpus/dev.spacy",
        "corpus/test.spacy",
        "training/model-best/meta.json",
        "training/model-release/meta.json",
        "metrics/test.json",
        "metrics/test.md",
        "metrics/test_sample.html",
    ):
        assert (project / path).is_file(), path
    scores = json.loads((project / "metrics/test.json").read_text())
    assert set(scores["seqeval_per_type"]) == {"PER", "ORG", "LOC", "MISC"}
    # The sample data is easy: 60 steps must teach even the 1-layer model most entities.
    assert scores["seqeval_f"] > 0.6
    assert "| **overall** |" in (project / "metrics/test.md").read_text()
    for key in ("calibrated", "uncalibrated"):
        confidence = scores["confidence"][key]
        assert sum(b["entities"] for b in confidence["reliability"]) == confidence["entities"] > 0
        assert 0.0 <= confidence["ece"] <= 1.0 and 0.0 <= confidence["brier"] <= 1.0
        assert 0.0 <= confidence["mean_confidence_right"] <= 1.0
    errors = scores["errors"]["counts"]
    assert (
        errors["right"]
        + errors.get("wrong type", 0)
        + errors.get("too short", 0)
        + errors.get("too long", 0)
        + errors.get("overlapping", 0)
        + errors.get("spurious", 0)
        == scores["confidence"]["calibrated"]["entities"]
    )
    train_time = json.loads((project / "training/train_time.json").read_text())
    assert 0 < train_time["train_seconds"] <= train_time["wall_seconds"] and train_time["gpu_id"] == -1
    # The dev evaluations are left out of train_seconds, as the reference Trainer's scoring is.
    log = [json.loads(line) for line in (project / "training/train_log.jsonl").read_text().splitlines()]
    assert abs(train_time["train_seconds"] + log[-1]["scoring_seconds"] - train_time["wall_seconds"]) < 0.2


def test_training_writes_its_log(project):
    log = [json.loads(line) for line in (project / "training/train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [0, 20, 40, 60]
    assert all(b["seconds"] > a["seconds"] and b["words"] > a["words"] for a, b in zip(log, log[1:]))
    # Every evaluation's scoring time is counted apart from the training time.
    assert log[-1]["scoring_seconds"] > 0 and all(
        b["scoring_seconds"] >= a["scoring_seconds"] for a, b in zip(log, log[1:])
    )
    assert all(abs(line["seconds"] + line["scoring_seconds"] - line["wall_seconds"]) < 0.02 for line in log)
    assert set(log[-1]["losses"]) == {"transformer", "ner"}
    assert 0.0 <= log[-1]["scores"]["seqeval_f"] <= 1.0 and set(log[-1]["per_type"]["seqeval_per_type"]) <= {
        "PER",
        "ORG",
        "LOC",
        "MISC",
    }


def test_calibration_is_fitted_on_dev_and_kept_in_the_pipeline(project):
    fit = json.loads((project / "metrics/calibration_dev.json").read_text())
    assert fit["split"].endswith("dev.spacy")
    before, after = fit["uncalibrated"], fit["calibrated"]
    # Isotonic regression fits the dev outcomes at least as well as the identity, a monotone map too.
    assert after["brier"] <= before["brier"] + 1e-9
    assert after["ece"] <= before["ece"] + 1e-9
    stored = json.loads((project / "training/model-release/entity_confidence/calibration.json").read_text())
    assert len(stored["x"]) == len(stored["y"]) == fit["points"] >= 2
    # The stored map is strictly increasing, so it keeps the order of the entities (beam probabilities
    # that differ by less than float precision near 1.0 may become equal).
    calibration = Calibration(stored["x"], stored["y"])
    mapped = [calibration(p) for p in numpy.linspace(0.0, 1.0, 10_001)]
    assert all(b > a for a, b in zip(mapped, mapped[1:]))


def test_model_selection_uses_the_seqeval_scorer(project):
    meta = json.loads((project / "training/model-best/meta.json").read_text())
    assert "seqeval_f" in meta["performance"] and "seqeval_per_type" in meta["performance"]
    config = load_config(project / "training/model-best/config.cfg", interpolate=False)
    assert config["components"]["ner"]["scorer"] == {"@scorers": "conll.seqeval_ner_scorer.v1"}


def test_rerun_skips_finished_steps(project, tiny_transformer, conll_dir):
    result = project_run_all(project, tiny_transformer, conll_dir)
    assert result.stdout.count("Skipping") == 6, result.stdout


def test_installed_package_loads_anywhere(installed_model):
    info = run_in_clean_process(
        installed_model,
        """
import json, sys, spacy
nlp = spacy.load("en_conll_distilbert")
doc = nlp("Bill Gates visited Microsoft in Seattle on Monday . Angela Merkel met Reuters in London .")
assert not any(p.endswith(("scripts", "model_code")) for p in sys.path)
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
""",
    )
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
    info = run_in_clean_process(
        installed_model,
        """
import json, spacy
text = "Bill Gates visited Microsoft in Seattle on Monday ."
with_conf = spacy.load("en_conll_distilbert")(text)
without = spacy.load("en_conll_distilbert", exclude=["entity_confidence"])(text)
print(json.dumps({
    "with": [(e.start_char, e.end_char, e.label_) for e in with_conf.ents],
    "without": [(e.start_char, e.end_char, e.label_) for e in without.ents],
    "confidences_off": [e._.confidence for e in without.ents],
}))
""",
    )
    assert info["with"] == info["without"] and info["with"]
    assert info["confidences_off"] == [None] * len(info["without"])


def test_defaults_are_distilbert_on_gpu_from_the_hub():
    """Without overrides the workflow fine-tunes distilbert-base-cased on GPU 0 from the hub
    dataset; the end-to-end tests above run that same config and commands, offline."""
    project_vars = yaml.safe_load((ROOT / "project.yml").read_text())["vars"]
    assert project_vars["transformer"] == "distilbert-base-cased"
    assert project_vars["gpu_id"] == 0 and project_vars["conll_dir"] == ""
    assert (project_vars["hub_id"], project_vars["hub_revision"]) == ("eriktks/conll2003", "refs/convert/parquet")


def test_installed_model_card(installed_model, tiny_transformer):
    info = run_in_clean_process(
        installed_model,
        """
import json, pathlib, spacy
nlp = spacy.load("en_conll_distilbert")
package_dir = pathlib.Path(spacy.util.get_package_path("en_conll_distilbert"))
print(json.dumps({"meta": nlp.meta, "readme": next(package_dir.glob("*/README.md")).read_text()}))
""",
    )
    meta, readme = info["meta"], info["readme"]
    assert meta["description"].startswith("English named entities (LOC, MISC, ORG, PER)")
    assert "fine-tuned on CoNLL-2003" in meta["description"]
    # The card names the model that was trained (the tiny local one), never the project's default.
    assert [source["name"] for source in meta["sources"]][0] == tiny_transformer.name
    assert "distilbert-base-cased" not in json.dumps(meta) and "distilbert-base-cased" not in readme
    assert meta["backbone"]["trained_name"] == str(tiny_transformer)
    assert (meta["backbone"]["model_type"], meta["backbone"]["layers"], meta["backbone"]["hidden"]) == (
        "distilbert",
        1,
        32,
    )
    assert meta["backbone"]["cased"] is True and 10_000 < meta["backbone"]["parameters"] < 100_000
    assert "CoNLL-2003" in meta["sources"][1]["name"] and "Reuters" in meta["sources"][1]["license"]
    assert "MIT" in meta["license"] and "backbone license not recorded" in meta["license"]
    # No author was given: no Author row, and no link to nothing.
    assert "| **Author** |" not in readme and "]()" not in readme
    assert meta["calibration"]["calibrated"]["ece"] == meta["test_performance"]["confidence"]["calibrated"]["ece"]
    test, dev = meta["test_performance"], meta["performance"]
    for text in (
        meta["description"],
        "Sources",
        f"Backbone: **{tiny_transformer.name}**",
        "distilbert, 1 layer, hidden 32",
        "parameters, cased",
        "CoNLL-2003",
        "Scores on the **test** split",
        f"| **overall** | {test['seqeval_p']:.4f} | {test['seqeval_r']:.4f} | {test['seqeval_f']:.4f} |",
        f"| MISC | {test['seqeval_per_type']['MISC']['p']:.4f}",
        "Confidence calibration on the **test** split",
        f"{test['confidence']['calibrated']['ece']:.4f}",
        f"{test['confidence']['uncalibrated']['ece']:.4f}",
        "Scores on the **dev** split",
        f"| **overall** | {dev['seqeval_p']:.4f} | {dev['seqeval_r']:.4f} | {dev['seqeval_f']:.4f} |",
        'spacy.load("en_conll_distilbert")',
        "ent._.confidence",
        "Intended use and limits",
        "English news",
        "license not recorded",
        "Code (the project and the code bundled in this package): MIT",
    ):
        assert text in readme, text
    assert "n/a" not in readme and "TRANSFORMER_LOSS" not in readme


# Appended to a copy of the report: after layout, write each chart's rendered size, the number of
# its drawn shapes and its text into the DOM, which Chromium then dumps.
CHART_PROBE = """<script>
document.body.setAttribute("data-charts", JSON.stringify([...document.querySelectorAll(".chart")].map(chart => {
  const svg = chart.querySelector("svg");
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {id: chart.id, width: box.width, height: box.height,
          shapes: svg ? svg.querySelectorAll("path, rect, line, use").length : 0,
          text: svg ? [...svg.querySelectorAll("text")].map(t => t.textContent).join(" | ") : ""};
})));
</script>"""


def test_report_renders_every_chart(project, tmp_path):
    page = tmp_path / "report.html"
    page.write_text((project / "metrics/report.html").read_text().replace("</body>", CHART_PROBE + "</body>"))
    dom = rendered_dom(page, tmp_path)
    charts = {c["id"]: c for c in json.loads(html.unescape(re.search(r'data-charts="([^"]*)"', dom).group(1)))}
    assert set(charts) == {"scores-chart", "reliability-chart", "training-chart"}
    for chart in charts.values():
        assert chart["width"] > 300 and chart["height"] > 150 and chart["shapes"] > 10, chart
    for label in ("PER", "ORG", "LOC", "MISC", "overall", "precision", "recall", "F1"):
        assert label in charts["scores-chart"]["text"], label
    for label in ("before calibration", "after calibration", "perfect calibration", "precision in the bin"):
        assert label in charts["reliability-chart"]["text"], label
    for label in ("dev seqeval F1", "step", "transformer", "ner"):
        assert label in charts["training-chart"]["text"], label
    assert "<h2>Error analysis</h2>" in dom and "gold \\ predicted" in dom
    errors = json.loads((project / "metrics/test.json").read_text())["errors"]["counts"]
    if set(errors) - {"right"}:  # examples of the errors, the gold and the predicted entities marked
        assert 'class="example"' in dom and '<mark class="gold">' in dom and '<mark class="pred">' in dom
    sample = dom[dom.index('id="displacy"') :]
    assert "<mark" in sample and ">PER</span>" in sample
