"""Your own data through the whole workflow: a corpus with its own entity types (PERSON, GPE, DATE,
PRODUCT), two tab-separated columns, BIOES tags, no -DOCSTART-, converted, trained, evaluated and
packaged under its own name by `spacy project run all`; the wheel, the report and the model card know
only those types."""

import json
import random
import sys
from pathlib import Path

import pytest
from conftest import PEOPLE, PLACES, copy_project, project_run_all, run_checked, run_in_clean_process, two_column_text

LABELS = ["DATE", "GPE", "PERSON", "PRODUCT"]
PRODUCTS = ["iPhone", "Windows 95", "Galaxy S9", "Model T Ford"]
DATES = ["Monday", "last Friday", "1 May 1996"]


def bioes(words: str, label: str):
    parts = words.split()
    if len(parts) == 1:
        return [(parts[0], f"S-{label}")]
    return [(word, ("B-" if i == 0 else "E-" if i == len(parts) - 1 else "I-") + label) for i, word in enumerate(parts)]


def own_sentence(rng: random.Random):
    return (
        bioes(rng.choice(PEOPLE), "PERSON")
        + [("bought", "O"), ("a", "O")]
        + bioes(rng.choice(PRODUCTS), "PRODUCT")
        + [("in", "O")]
        + bioes(rng.choice(PLACES), "GPE")
        + bioes(rng.choice(DATES), "DATE")
        + [(".", "O")]
    )


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> Path:
    rng = random.Random(7)
    data_dir = tmp_path_factory.mktemp("data") / "shop-reviews"
    data_dir.mkdir()
    for name, count in (("train.txt", 32), ("valid.txt", 12), ("test.txt", 12)):
        (data_dir / name).write_text(two_column_text([own_sentence(rng) for _ in range(count)]), encoding="utf-8")
    return data_dir


@pytest.fixture(scope="module")
def own_project(tmp_path_factory, tiny_transformer, own_data) -> Path:
    project_dir = copy_project(tmp_path_factory.mktemp("own-project"))
    project_run_all(project_dir, tiny_transformer, own_data, package_name="shop_ner", package_title="Shop NER")
    return project_dir


def test_converted_with_its_scheme_and_labels(own_project):
    info = json.loads((own_project / "corpus/corpus.json").read_text())
    assert info["name"] == "shop-reviews" and not info["conll2003"]
    assert info["labels"] == LABELS and set(info["tag_schemes"].values()) == {"bioes"}


def test_seqeval_scores_its_labels_and_the_report_shows_them(own_project):
    scores = json.loads((own_project / "metrics/test.json").read_text())
    assert sorted(scores["seqeval_per_type"]) == LABELS
    assert scores["seqeval_f"] > 0.3  # the 1-layer model learns some of the easy sample
    report = (own_project / "metrics/report.html").read_text()
    scores_chart = report[report.index('id="scores-chart"') : report.index("</svg>", report.index('id="scores-chart"'))]
    confusion = report[report.index("gold \\ predicted") : report.index("</table>", report.index("gold \\ predicted"))]
    for label in LABELS:
        assert f">{label}<" in scores_chart, label
        assert f"<th>{label}</th>" in confusion and f"<td>{label}</td>" in confusion, label
    assert not any(f">{label}<" in report for label in ("PER", "ORG", "LOC", "MISC"))


def test_the_wheel_has_its_name_labels_and_card(own_project, tmp_path):
    wheels = list((own_project / "packages").glob("en_shop_ner-0.0.1/dist/*.whl"))
    assert len(wheels) == 1
    site = tmp_path / "site"
    run_checked(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheels[0])],
        cwd=tmp_path,
    )
    info = run_in_clean_process(
        site,
        """
import json, pathlib, spacy
nlp = spacy.load("en_shop_ner")
package_dir = pathlib.Path(spacy.util.get_package_path("en_shop_ner"))
doc = nlp("Bill Gates bought a Galaxy S9 in London last Friday .")
print(json.dumps({"labels": list(nlp.get_pipe("ner").labels), "meta": nlp.meta,
                  "ents": [e.label_ for e in doc.ents], "readme": next(package_dir.glob("*/README.md")).read_text()}))
""",
    )
    assert info["labels"] == LABELS and set(info["ents"]) <= set(LABELS)
    meta, readme = info["meta"], info["readme"]
    assert meta["name"] == "shop_ner" and meta["title"] == "Shop NER" and readme.startswith("# Shop NER\n")
    assert meta["description"].startswith("English named entities (DATE, GPE, PERSON, PRODUCT) with calibrated")
    assert "fine-tuned on shop-reviews" in meta["description"]
    per_type = meta["test_performance"]["seqeval_per_type"]
    for label in LABELS:
        assert (
            f"| {label} | {per_type[label]['p']:.4f} | {per_type[label]['r']:.4f} | {per_type[label]['f']:.4f} |"
            in readme
        ), label
    assert "Scores on the **test** split (shop-reviews, test, seqeval, word level)" in readme
    assert "Training data: **shop-reviews** (32 training sentences, tags read as BIOES; its own terms apply)" in readme
    assert "Named entities of the types DATE, GPE, PERSON, PRODUCT, as shop-reviews annotates them" in readme
    assert 'spacy.load("en_shop_ner")' in readme
    for conll_only in ("CoNLL", "Reuters", "PER)", "MISC"):
        assert conll_only not in readme and conll_only not in json.dumps(meta), conll_only
