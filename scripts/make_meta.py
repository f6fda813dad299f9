"""The model card: the package's meta.json and README, in a copy of the release pipeline that
`spacy package` then builds the wheel from (the release pipeline itself stays as calibrate wrote it).

The meta is the trained pipeline's, plus what `spacy package` reads from it (description, sources,
license, author, url) and what it cannot know: the requirements of the bundled --code, the test
scores (`test_performance`) and the calibration figures (`calibration`). The README is spaCy's own
table from that meta, followed by the card's sections, each score labelled with its split: the
test scores overall and per type, the calibration on test (before and after), the dev scores, how
to load the model and read `ent._.confidence`, intended use and limits, and the licenses. In the
pipeline directory, `spacy package` takes it instead of generating one.
"""
import json
import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any, Dict, List

import typer
from packaging.requirements import Requirement
from spacy.cli.package import generate_readme

from project_util import atomic_write_text, read_json

app = typer.Typer(add_completion=False)
LABELS = ("PER", "ORG", "LOC", "MISC")
CONLL = {
    "name": "CoNLL-2003 (English NER shared task: Tjong Kim Sang & De Meulder, 2003)",
    "url": "https://www.clips.uantwerpen.be/conll2003/ner/",
    "license": "Reuters Corpus (RCV1) terms: research use, text (c) Reuters",
}


def scores_rows(performance: Dict[str, Any]) -> List[str]:
    rows = [f"| **overall** | {performance['seqeval_p']:.4f} | {performance['seqeval_r']:.4f} "
            f"| {performance['seqeval_f']:.4f} |"]
    per_type = performance["seqeval_per_type"]
    rows += [f"| {label} | {per_type[label]['p']:.4f} | {per_type[label]['r']:.4f} | {per_type[label]['f']:.4f} |"
             for label in LABELS if label in per_type]
    return ["| type | precision | recall | F1 |", "|---|---|---|---|", *rows]


def calibration_rows(confidence: Dict[str, Any]) -> List[str]:
    rows = ["| | ECE (10 bins) | Brier | AUROC right vs wrong | mean confidence | precision |", "|---|---|---|---|---|---|"]
    for name, key in (("the NER's probability, before calibration", "uncalibrated"), ("ent._.confidence", "calibrated")):
        c = confidence[key]
        auroc = "n/a" if c["auroc"] is None else f"{c['auroc']:.4f}"
        rows.append(f"| {name} | {c['ece']:.4f} | {c['brier']:.4f} | {auroc} | {c['mean_confidence']:.3f} "
                    f"| {c['precision']:.3f} |")
    return rows


def card_sections(meta: Dict[str, Any], backbone: Dict[str, str]) -> str:
    name = f"{meta['lang']}_{meta['name']}"
    test, dev = meta["test_performance"], meta["performance"]
    lines = [
        "### Scores on the **test** split (CoNLL-2003 `test`, seqeval, word level)",
        "",
        *scores_rows(test),
        "",
        f"Token accuracy {test['seqeval_accuracy']:.4f}; spaCy's stricter `ents_f` {test['ents_f']:.4f}. "
        f"{test['n_docs']} documents, {test['n_words']} words.",
        "",
    ]
    if test.get("confidence"):
        lines += [
            "### Confidence calibration on the **test** split",
            "",
            "An entity is right when its span and type match a gold entity. The map was fitted on the dev "
            "split (isotonic regression); test was not used for it.",
            "",
            *calibration_rows(test["confidence"]),
            "",
        ]
    lines += [
        "### Scores on the **dev** split (CoNLL-2003 `validation`, used to select the model during training)",
        "",
        *scores_rows(dev),
        "",
        "### Use",
        "",
        "```python",
        "import spacy",
        "",
        f'nlp = spacy.load("{name}")',
        'doc = nlp("Bill Gates was the CEO of Microsoft in Seattle, Washington.")',
        "for ent in doc.ents:",
        "    print(ent.label_, ent.text, ent.start_char, ent.end_char, ent._.confidence)",
        "```",
        "",
        "`ent._.confidence` is the probability that the entity is right (its span and its type), "
        "calibrated on dev: among entities with a confidence of about 0.8, about 80% are right. "
        "`ent._.raw_confidence` is the NER's own probability of the entity, before calibration. "
        f'`spacy.load("{name}", exclude=["entity_confidence"])` is faster and gives no confidences. '
        f"Texts over `nlp.max_length` characters: `from {name}.long_texts import annotate_long_text`.",
        "",
        "### Intended use and limits",
        "",
        "- Named entities in English news-style text: people (PER), organisations (ORG), locations (LOC) "
        "and other names (MISC: nationalities, events, works...), as CoNLL-2003 annotates them; no other "
        "types, no nested entities.",
        "- Trained on Reuters news of 1996-1997: expect lower scores on other genres (social media, "
        "clinical, legal), on text without capitalisation, and on names that appeared after that time.",
        "- The confidence is calibrated on CoNLL-2003 dev, in-domain: on other text it still ranks "
        "entities, but its values may be over-confident.",
        "",
        "### Sources and licenses",
        "",
        f"- Backbone: {backbone['name']} ({backbone['url']}), license {backbone['license']}, fine-tuned here.",
        f"- Training data: {CONLL['name']}, {CONLL['url']}; the text comes from the Reuters Corpus (RCV1) and "
        "is distributed for research under the Reuters/NIST agreement: check its terms before commercial use.",
        "- Code (the project and the code bundled in this package): MIT.",
    ]
    return "\n".join(lines) + "\n"


@app.command()
def main(
    model_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Release pipeline"),
    test_scores: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON written by evaluate.py on test"),
    package_dir: Path = typer.Argument(..., help="Where to write the copy of the pipeline with the card"),
    name: str = typer.Option(..., help="Package name without the language prefix, as `spacy package --name`"),
    package_version: str = typer.Option(..., "--version", help="Package version, as `spacy package --version`"),
    requirement: List[str] = typer.Option(["seqeval"], "--requirement", "-r", help="Package the bundled code needs"),
    backbone_name: str = typer.Option("distilbert-base-cased", help="The transformer's name"),
    backbone_url: str = typer.Option("https://huggingface.co/distilbert-base-cased", help="Where it came from"),
    backbone_license: str = typer.Option("Apache-2.0", help="Its license"),
):
    meta = read_json(model_dir / "meta.json")
    meta.update({"name": name, "version": package_version})
    requirements = meta.setdefault("requirements", [])
    present = {Requirement(req).name for req in requirements}
    requirements += [f"{package}>={version(package)}" for package in requirement if package not in present]
    test = read_json(test_scores)
    meta["test_performance"] = test
    meta["calibration"] = test.get("confidence")
    backbone = {"name": backbone_name, "url": backbone_url, "license": backbone_license}
    meta.update({
        "description": (f"English named entities (PER, ORG, LOC, MISC) with calibrated confidences: "
                        f"{backbone_name} fine-tuned on CoNLL-2003 with spaCy. Test seqeval F1 "
                        f"{test['seqeval_f']:.4f}."),
        "sources": [{**backbone, "author": "Hugging Face hub"}, CONLL],
        "license": f"MIT (code), {backbone_license} (backbone); CoNLL-2003 data terms apply",
        "author": "the CoNLL NER spaCy project",
        "notes": card_sections(meta, backbone),
    })
    shutil.rmtree(package_dir, ignore_errors=True)
    shutil.copytree(model_dir, package_dir)
    atomic_write_text(package_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    # spaCy's README table, without its unlabelled "Accuracy" table (dev scores and losses): the
    # card's sections label each split.
    atomic_write_text(package_dir / "README.md", generate_readme({k: v for k, v in meta.items() if k != "performance"}))


if __name__ == "__main__":
    app()
