"""The model card: the package's meta.json and README, in a copy of the release pipeline that
`spacy package` then builds the wheel from (the release pipeline itself stays as calibrate wrote it).

The meta is the trained pipeline's, plus what `spacy package` reads from it (description, sources,
license, author, url) and what it cannot know: the requirements of the bundled --code, the test
scores (`test_performance`) and the calibration figures (`calibration`). The README is spaCy's own
table from that meta, followed by the card's sections, each score labelled with its split: the
test scores overall and per type, the calibration on test (before and after), the dev scores, how
to load the model and read `ent._.confidence`, intended use and limits, and the licenses. In the
pipeline directory, `spacy package` takes it instead of generating one.

The backbone the card names is the one that was trained: the transformer's name in the pipeline's
config, its architecture and size from the weights stored in the pipeline, and for a local directory
its own config.json and model card (`license:`). Only a name, URL or license passed explicitly
overrides what is found; what cannot be found is said to be unknown, never guessed.

With --seed-scores, the card also gives the recipe's test and dev F1 over seeds (mean, spread) from
bench-ablation-score's results, for the variant named by --seed-variant.

The data is what convert read (its corpus.json): the card names it, lists the labels the pipeline
learnt, and gives CoNLL-2003's citation, Reuters terms and news-genre limits only when that is the data.
"""

import json
import re
import shutil
import tempfile
from importlib.metadata import version
from io import BytesIO
from pathlib import Path
from typing import Any, Dict, List, Optional

import srsly
import torch
import typer
from packaging.requirements import Requirement
from spacy.cli.package import generate_readme
from spacy.util import get_lang_class, load_config
from transformers import AutoTokenizer

from scripts.project_util import SetupError, atomic_write_text, one_line_errors, read_json

app = typer.Typer(add_completion=False)
CONLL = {
    "name": "CoNLL-2003 (English NER shared task: Tjong Kim Sang & De Meulder, 2003)",
    "url": "https://www.clips.uantwerpen.be/conll2003/ner/",
    "license": "Reuters Corpus (RCV1) terms: research use, text (c) Reuters",
}


def scores_rows(performance: Dict[str, Any]) -> List[str]:
    rows = [
        f"| **overall** | {performance['seqeval_p']:.4f} | {performance['seqeval_r']:.4f} "
        f"| {performance['seqeval_f']:.4f} |"
    ]
    per_type = performance["seqeval_per_type"]
    rows += [
        f"| {label} | {per_type[label]['p']:.4f} | {per_type[label]['r']:.4f} | {per_type[label]['f']:.4f} |"
        for label in sorted(per_type)
    ]
    return ["| type | precision | recall | F1 |", "|---|---|---|---|", *rows]


def calibration_rows(confidence: Dict[str, Any]) -> List[str]:
    rows = [
        "| | ECE (10 bins) | Brier | AUROC right vs wrong | mean confidence | precision |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("the NER's probability, before calibration", "uncalibrated"),
        ("ent._.confidence", "calibrated"),
    ):
        c = confidence[key]
        auroc = "n/a" if c["auroc"] is None else f"{c['auroc']:.4f}"
        rows.append(
            f"| {name} | {c['ece']:.4f} | {c['brier']:.4f} | {auroc} | {c['mean_confidence']:.3f} "
            f"| {c['precision']:.3f} |"
        )
    return rows


def local_model_card_license(model_dir: Path) -> Optional[str]:
    """The `license:` of a Hugging Face model card's front matter (README.md), if there is one."""
    readme = model_dir / "README.md"
    text = readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else ""
    front_matter = re.match(r"---\n(.*?)\n---", text, re.S)
    found = front_matter and re.search(r"^license:\s*(\S+)", front_matter.group(1), re.M)
    return found.group(1) if found else None


def trained_backbone(pipeline_dir: Path) -> Dict[str, Any]:
    """What the pipeline's transformer is: the name it was trained from, and its architecture, size
    and casing from the weights and tokenizer that spacy-transformers stored in the pipeline."""
    trained_name = load_config(pipeline_dir / "config.cfg", interpolate=False)["components"]["transformer"]["model"][
        "name"
    ]
    # thinc's Model.to_bytes: a list of shims per layer; the one shim is spacy-transformers' HFShim,
    # whose bytes hold the HF config, the weights and the tokenizer files.
    layers = srsly.msgpack_loads((pipeline_dir / "transformer" / "model").read_bytes())
    stored = srsly.msgpack_loads(next(shim for shims in layers["shims"] for shim in shims))
    hf_config = stored["config"]
    state = torch.load(BytesIO(stored["state"]), map_location="cpu", weights_only=True)
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        for file_name, content in stored["tokenizer"].items():
            if isinstance(content, bytes):
                (Path(tokenizer_dir) / file_name).write_bytes(content)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, **stored["tokenizer"].get("kwargs", {}))
    backbone = {
        "trained_name": trained_name,
        "model_type": hf_config.get("model_type", "unknown"),
        "layers": hf_config.get("num_hidden_layers", hf_config.get("n_layers")),
        "hidden": hf_config.get("hidden_size", hf_config.get("dim")),
        "parameters": sum(tensor.numel() for tensor in state.values() if tensor.is_floating_point()),
        "cased": tokenizer.tokenize("Paris") != tokenizer.tokenize("paris"),
        "name": trained_name,
        "url": None,
        "license": None,
        "based_on": None,
    }
    local_dir = Path(trained_name)
    if local_dir.is_dir():
        # A save_pretrained directory: named after itself; its config.json may name what it was made from.
        backbone["name"] = local_dir.resolve().name
        own_config = srsly.read_json(local_dir / "config.json") if (local_dir / "config.json").is_file() else {}
        backbone["based_on"] = own_config.get("_name_or_path") or None
        backbone["license"] = local_model_card_license(local_dir)
    else:
        backbone["url"] = f"https://huggingface.co/{trained_name}"
    return backbone


def backbone_summary(backbone: Dict[str, Any]) -> str:
    """One line: what the backbone is and how big, e.g. "bert, 6 layers, hidden 384, 22.7M parameters, uncased"."""
    size = f"{backbone['parameters'] / 1e6:.1f}M" if backbone["parameters"] >= 1e5 else f"{backbone['parameters']:,}"
    layers = f"{backbone['layers']} layer{'' if backbone['layers'] == 1 else 's'}"
    return (
        f"{backbone['model_type']}, {layers}, hidden {backbone['hidden']}, {size} parameters, "
        f"{'cased' if backbone['cased'] else 'uncased'}"
    )


def backbone_source_line(backbone: Dict[str, Any]) -> str:
    where = (
        f" ({backbone['url']})"
        if backbone["url"]
        else f" (a local directory, trained from `{backbone['trained_name']}`)"
    )
    based_on = f"; its config names `{backbone['based_on']}` as its origin" if backbone["based_on"] else ""
    license_text = backbone["license"] or "not recorded (pass --vars.backbone_license)"
    return (
        f"- Backbone: **{backbone['name']}**{where}: {backbone_summary(backbone)}{based_on}; license "
        f"{license_text}; fine-tuned here."
    )


def training_data(corpus_info: Optional[Path]) -> Dict[str, Any]:
    """What convert read (corpus.json): its name, whether it is CoNLL-2003, its labels and tag schemes."""
    info = read_json(corpus_info) if corpus_info and corpus_info.is_file() else {}
    conll2003 = bool(info.get("conll2003"))
    return {
        "name": "CoNLL-2003" if conll2003 else info.get("name") or "the training data",
        "conll2003": conll2003,
        "schemes": sorted(set(info.get("tag_schemes", {}).values())),
        "sentences": info.get("splits", {}).get("train", {}).get("sentences"),
    }


def intended_use(data: Dict[str, Any], labels: List[str]) -> List[str]:
    if data["conll2003"]:
        return [
            "- Named entities in English news-style text: people (PER), organisations (ORG), locations (LOC) "
            "and other names (MISC: nationalities, events, works...), as CoNLL-2003 annotates them; no other "
            "types, no nested entities.",
            "- Trained on Reuters news of 1996-1997: expect lower scores on other genres (social media, "
            "clinical, legal), on text without capitalisation, and on names that appeared after that time.",
            "- The confidence is calibrated on CoNLL-2003 dev, in-domain: on other text it still ranks "
            "entities, but its values may be over-confident.",
        ]
    return [
        f"- Named entities of the types {', '.join(labels)}, as {data['name']} annotates them; no other types, "
        "no nested entities.",
        f"- Expect lower scores on text unlike {data['name']} (another genre, period, spelling or language).",
        f"- The confidence is calibrated on the dev split of {data['name']}: on other text it still ranks "
        "entities, but its values may be over-confident.",
    ]


def data_source_line(data: Dict[str, Any]) -> str:
    if data["conll2003"]:
        return (
            f"- Training data: {CONLL['name']}, {CONLL['url']}; the text comes from the Reuters Corpus (RCV1) "
            "and is distributed for research under the Reuters/NIST agreement: check its terms before commercial "
            "use."
        )
    read = f"{data['sentences']:,} training sentences, " if data["sentences"] else ""
    schemes = f"tags read as {' and '.join(s.upper() for s in data['schemes'])}; " if data["schemes"] else ""
    return f"- Training data: **{data['name']}** ({read}{schemes}its own terms apply)."


def seed_scores(path: Path, variant: str) -> Dict[str, Any]:
    """The variant's F1 over seeds from bench-ablation-score's results (benchmarks/ablation.py)."""
    try:
        results = read_json(path)
    except (OSError, ValueError) as err:
        raise SetupError(f"--seed-scores {path}: not a readable JSON file ({err}).") from err
    variants = results.get("variants") if isinstance(results, dict) else None
    if not isinstance(variants, dict):
        raise SetupError(f"--seed-scores {path}: no 'variants' object; give the JSON that bench-ablation-score wrote.")
    if variant not in variants:
        raise SetupError(f"--seed-variant {variant!r}: not in {path}; it has {', '.join(variants) or 'none'}.")
    scores = variants[variant]
    for field in ("test_f1", "dev_f1"):
        if not {"mean", "std", "min", "max", "n"} <= set(scores.get(field, {})):
            raise SetupError(f"--seed-scores {path}: variants.{variant}.{field} lacks mean, std, min, max or n.")
    return {
        "variant": variant,
        "seeds": scores.get("seeds", []),
        "source": path.name,
        **{field: scores[field] for field in ("test_f1", "dev_f1")},
    }


def seed_line(over_seeds: Dict[str, Any]) -> str:
    test, dev = over_seeds["test_f1"], over_seeds["dev_f1"]
    return (
        f"The recipe this package was trained with, over {test['n']} seeds "
        f"({over_seeds['source']}): test F1 **{test['mean']:.4f} ± {test['std']:.4f}** (standard deviation; "
        f"{test['min']:.4f}–{test['max']:.4f}), dev F1 {dev['mean']:.4f} ± {dev['std']:.4f}."
    )


def card_sections(meta: Dict[str, Any], backbone: Dict[str, Any], data: Dict[str, Any]) -> str:
    name = f"{meta['lang']}_{meta['name']}"
    test, dev = meta["test_performance"], meta["performance"]
    labels = meta["labels"]["ner"]
    example = "Bill Gates was the CEO of Microsoft in Seattle, Washington." if data["conll2003"] else "Your text here."
    test_split = "CoNLL-2003 `test`" if data["conll2003"] else f"{data['name']}, test"
    dev_split = "CoNLL-2003 `validation`" if data["conll2003"] else f"{data['name']}, dev"
    lines = [
        f"### Scores on the **test** split ({test_split}, seqeval, word level)",
        "",
        *scores_rows(test),
        "",
        f"Token accuracy {test['seqeval_accuracy']:.4f}; spaCy's stricter `ents_f` {test['ents_f']:.4f}. "
        f"{test['n_docs']} documents, {test['n_words']} words.",
        "",
    ]
    if meta.get("test_performance_over_seeds"):
        lines += [seed_line(meta["test_performance_over_seeds"]), ""]
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
        f"### Scores on the **dev** split ({dev_split}, used to select the model during training)",
        "",
        *scores_rows(dev),
        "",
        "### Use",
        "",
        "```python",
        "import spacy",
        "",
        f'nlp = spacy.load("{name}")',
        f"doc = nlp({json.dumps(example)})",
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
        *intended_use(data, labels),
        "",
        "### Sources and licenses",
        "",
        backbone_source_line(backbone),
        data_source_line(data),
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
    backbone_name: str = typer.Option("", help="The transformer's name, if not the one it was trained from"),
    backbone_url: str = typer.Option("", help="Where the transformer came from (default: its hub page)"),
    backbone_license: str = typer.Option("", help="Its license (default: its model card's, if it has one)"),
    corpus_info: Optional[Path] = typer.Option(
        None,
        help="corpus.json written by convert: the data's name, "
        "labels and tag schemes (without it the data is not named)",
    ),
    title: str = typer.Option("", help="The card's title (default: the data, NER, and the backbone)"),
    description: str = typer.Option(
        "", help="The package's description (default: its language, entity types, backbone, data and test F1)"
    ),
    author: str = typer.Option("", help="The model's author, for the card (empty: no Author row)"),
    url: str = typer.Option("", help="The author's or project's URL, for the card"),
    seed_scores_path: str = typer.Option(
        "", "--seed-scores", help="bench-ablation-score's results: the card gives --seed-variant's F1 over seeds"
    ),
    seed_variant: str = typer.Option("", help="The variant of --seed-scores this package's recipe is"),
):
    meta = read_json(model_dir / "meta.json")
    meta.update({"name": name, "version": package_version})
    requirements = meta.setdefault("requirements", [])
    present = {Requirement(req).name for req in requirements}
    requirements += [f"{package}>={version(package)}" for package in requirement if package not in present]
    test = read_json(test_scores)
    meta["test_performance"] = test
    if seed_scores_path:
        with one_line_errors():
            meta["test_performance_over_seeds"] = seed_scores(Path(seed_scores_path), seed_variant)
    meta["calibration"] = test.get("confidence")
    backbone = trained_backbone(model_dir)
    explicit = {"name": backbone_name, "url": backbone_url, "license": backbone_license}
    backbone.update({key: value for key, value in explicit.items() if value})
    data = training_data(corpus_info)
    labels = ", ".join(meta["labels"]["ner"])
    language = get_lang_class(meta["lang"]).__name__
    meta.update(
        {
            "title": title or f"{data['name']} NER with {backbone['name']}",
            "description": description
            or (
                f"{language} named entities ({labels}) with calibrated confidences: {backbone['name']} "
                f"({backbone_summary(backbone)}) fine-tuned on {data['name']} with spaCy. "
                f"Test seqeval F1 {test['seqeval_f']:.4f}."
            ),
            "sources": [
                {
                    "name": backbone["name"],
                    "url": backbone["url"] or "",
                    "license": backbone["license"] or "",
                    "author": "Hugging Face hub" if backbone["url"] else "local directory",
                },
                CONLL if data["conll2003"] else {"name": data["name"], "url": "", "license": "", "author": ""},
            ],
            "license": (
                f"MIT (code), {backbone['license'] or 'backbone license not recorded'}"
                f"{' (backbone)' if backbone['license'] else ''}; "
                f"{'CoNLL-2003 data terms' if data['conll2003'] else 'the terms of the training data'} apply"
            ),
            "backbone": backbone,
            "training_data": data,
            "notes": card_sections(meta, backbone, data),
        }
    )
    meta.pop("author", None)
    meta.pop("url", None)
    if author:
        meta["author"] = author
    if url:
        meta["url"] = url
    shutil.rmtree(package_dir, ignore_errors=True)
    shutil.copytree(model_dir, package_dir)
    atomic_write_text(package_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    # spaCy's README table, without its unlabelled "Accuracy" table (dev scores and losses): the
    # card's sections label each split.
    readme = f"# {meta['title']}\n\n" + generate_readme({k: v for k, v in meta.items() if k != "performance"})
    if not author:  # spaCy's table always has an Author row; without an author it would say "n/a"
        readme = "".join(line for line in readme.splitlines(keepends=True) if not line.startswith("| **Author** |"))
    atomic_write_text(package_dir / "README.md", readme)


if __name__ == "__main__":
    app()
