"""Convert a CoNLL-style NER corpus into spaCy DocBin files: corpus/{train,dev,test}.spacy.

Two sources:
- a local directory with one file per split (by default CoNLL-2003's train.txt/valid.txt/test.txt,
  or the original eng.train/eng.testa/eng.testb): one token a line, the word in the first column and
  the tag in the last (or a chosen) column, columns separated by spaces or tabs, a blank line after
  each sentence, `-DOCSTART-` lines between documents where there are documents;
- a Hugging Face `datasets` dataset with `tokens` and `ner_tags` columns (CoNLL-2003 by default),
  whose label names come from the dataset's features. It has no document boundaries.

The tags may be IOB1, IOB2, BIOES (IOBES) or BILUO, detected per file or forced; a file that mixes
schemes is an error that names the lines that disagree. The labels are whatever the data holds.

A Doc is a group of up to `n_sents` consecutive sentences of one document, with sentence
starts set, so the transformer sees context across sentences. Besides the DocBins, corpus.json
records the source, the labels, each split's tag scheme and counts, for the model card.
"""

import json
import re
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import typer
from spacy.tokens import Doc, DocBin
from spacy.training import biluo_tags_to_spans, iob_to_biluo
from spacy.vocab import Vocab
from wasabi import msg

from scripts.project_util import SetupError, atomic_output, check_output_path, one_line_errors

SPLIT_FILES = {
    "train": ("train.txt", "eng.train"),
    "dev": ("valid.txt", "eng.testa"),
    "test": ("test.txt", "eng.testb"),
}
HF_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
DOCSTART = "-DOCSTART-"
CONLL2003_LABELS = {"PER", "ORG", "LOC", "MISC"}
# The prefixes each scheme writes; the last two of BIOES and BILUO end an entity and make a one-token one.
SCHEMES = {"iob1": "BI", "iob2": "BI", "bioes": "BIES", "biluo": "BILU"}
TAG = re.compile(r"O|([BIESLU])-(\S+)")

app = typer.Typer(add_completion=False)


class ConllFormatError(ValueError):
    """Bad CoNLL input; the message names the file, the line and the problem."""

    def __init__(self, path: Path, line: Optional[int], problem: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass
class Sentence:
    words: List[str]
    tags: List[str]
    first_line: int = 0
    # A file has a line a token; a dataset row is a whole sentence.
    line_per_token: bool = True

    def line(self, index: int) -> int:
        return self.first_line + index if self.line_per_token else self.first_line


@dataclass
class Document:
    sentences: List[Sentence] = field(default_factory=list)


@dataclass
class Split:
    """One split as read: its documents, where they came from and the tag scheme they were read in."""

    source: Path
    documents: List[Document]
    scheme: str

    @property
    def sentences(self) -> List[Sentence]:
        return [sentence for document in self.documents for sentence in document.sentences]


def split_columns(line: str) -> List[str]:
    """Tab-separated columns where the line has a tab (a word may then hold spaces), else whitespace-separated."""
    line = line.strip()
    return [column.strip() for column in line.split("\t")] if "\t" in line else line.split()


def bad_tag(tag: str) -> str:
    return f"tag {tag!r} is not O or a prefix B-, I-, E-, S-, L- or U- with a label"


def tag_column_index(path: Path, line_no: int, columns: int, tag_column: int) -> int:
    index = tag_column if tag_column >= 0 else columns + tag_column
    if columns < 2:
        raise ConllFormatError(path, line_no, "one column only: expected the word and its tag")
    if not 0 < index < columns:
        raise ConllFormatError(
            path,
            line_no,
            f"tag column {tag_column} is not among this file's {columns} "
            "columns after the word (0 is the word; -1, the default, is the last)",
        )
    return index


def read_conll_file(path: Path, tag_column: int = -1, scheme: str = "auto") -> Split:
    """Read one CoNLL-style file into documents of sentences, validating every line and the tag scheme."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConllFormatError(path, None, f"cannot read file ({err.strerror})") from err
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not part of the first word
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConllFormatError(path, line, f"not valid UTF-8 (byte 0x{raw[err.start]:02x})") from err
    if not text.strip():
        raise ConllFormatError(path, None, "file is empty")
    documents: List[Document] = [Document()]
    sentence = Sentence([], [])
    layout: Optional[Tuple[int, int, int]] = None  # (columns, tag index, the line that set them)
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = split_columns(line)
        if not fields or fields[0] == DOCSTART:
            if sentence.words:
                documents[-1].sentences.append(sentence)
            sentence = Sentence([], [])
            if fields and documents[-1].sentences:
                documents.append(Document())
            continue
        if layout is None:
            layout = (len(fields), tag_column_index(path, line_no, len(fields), tag_column), line_no)
        columns, tag_index, layout_line = layout
        if len(fields) != columns:
            raise ConllFormatError(
                path, line_no, f"{len(fields)} columns where line {layout_line} has {columns}: {line.strip()!r}"
            )
        tag = fields[tag_index]
        if not TAG.fullmatch(tag):
            raise ConllFormatError(path, line_no, f"{bad_tag(tag)} (column {tag_index})")
        if not sentence.words:
            sentence.first_line = line_no
        sentence.words.append(fields[0])
        sentence.tags.append(tag)
    if sentence.words:
        documents[-1].sentences.append(sentence)
    documents = [doc for doc in documents if doc.sentences]
    if not documents:
        raise ConllFormatError(path, None, "file holds no tokens, only -DOCSTART- lines or blank lines")
    sentences = [s for doc in documents for s in doc.sentences]
    return Split(path, documents, resolve_scheme(path, sentences, scheme))


SIGNS = {
    # What only one scheme (family) writes, so that a file showing two of them mixes schemes.
    "iob1": "opens an entity with I-, as only IOB1 does",
    "iob2": "opens an entity with B-, as IOB1 never does",
    "bioes": "is a BIOES tag (S- or E-)",
    "biluo": "is a BILUO tag (L- or U-)",
}
Sign = Tuple[int, str]  # the line, and its tag after the one before


def continues(previous: str, tag: str) -> bool:
    """Whether TAG follows a B- or I- tag of its own type."""
    return previous[0] in "BI" and previous[2:] == tag[2:]


def scheme_signs(sentences: Sequence[Sentence]) -> Dict[str, List[Sign]]:
    """The lines that show each scheme's sign."""
    signs: Dict[str, List[Sign]] = {name: [] for name in SIGNS}
    for sentence in sentences:
        for i, tag in enumerate(sentence.tags):
            previous = sentence.tags[i - 1] if i else "O"
            prefix, continued = tag[0], continues(previous, tag)
            kind = (
                "bioes"
                if prefix in "SE"
                else "biluo"
                if prefix in "LU"
                else "iob1"
                if prefix == "I" and not continued
                else "iob2"
                if prefix == "B" and not continued
                else None
            )
            if kind:
                signs[kind].append((sentence.line(i), f"{tag} after {previous if i else 'the sentence start'}"))
    return signs


def mixed_schemes_error(path: Path, signs: Dict[str, List[Sign]], first: str, second: str) -> ConllFormatError:
    """The scheme shown by fewer lines is the one that disagrees: name its lines and the other's first."""
    fewer, more = sorted((first, second), key=lambda name: len(signs[name]))
    lines = [line for line, _ in signs[fewer]]
    listed = ", ".join(map(str, lines[:5])) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
    others = len(signs[more])
    return ConllFormatError(
        path,
        lines[0],
        f"mixes tag schemes: {signs[fewer][0][1]} {SIGNS[fewer]} (line{'s' if len(lines) > 1 else ''} {listed}), "
        f"but {signs[more][0][1]} {SIGNS[more]} ({others} line{'s' if others > 1 else ''} from line "
        f"{signs[more][0][0]}). Fix: write the tags in one scheme, or force one with --tag-scheme to see each tag "
        "that breaks it.",
    )


def detect_scheme(path: Path, sentences: Sequence[Sentence]) -> str:
    signs = scheme_signs(sentences)
    if signs["bioes"] and signs["biluo"]:
        raise mixed_schemes_error(path, signs, "bioes", "biluo")
    for scheme in ("bioes", "biluo"):
        if signs[scheme]:
            return scheme
    if signs["iob1"] and signs["iob2"]:
        raise mixed_schemes_error(path, signs, "iob1", "iob2")
    return "iob1" if signs["iob1"] else "iob2"


def scheme_break(tags: Sequence[str], scheme: str) -> Optional[Tuple[int, str]]:
    """The first position where TAGS break SCHEME, and how; None where they follow it."""
    prefixes = SCHEMES[scheme]
    open_label: Optional[str] = None  # the type of the entity still open before this tag
    for i, tag in enumerate([*tags, "O"]):
        prefix, label = tag[0], tag[2:]
        after = tags[i - 1] if i else "the sentence start"
        if tag != "O" and prefix not in prefixes:
            return i, f"{tag}: {scheme.upper()} has no {prefix}- tags (it writes {', '.join(prefixes)})"
        continued = i > 0 and continues(tags[i - 1], tag)
        if scheme == "iob2" and prefix == "I" and not continued:
            return i, f"{tag} follows {after}: an I- tag continues an entity of its type (IOB2 entities start with B-)"
        if scheme == "iob1" and prefix == "B" and not continued:
            return i, f"{tag} follows {after}: IOB1 writes B- only between two adjacent entities of one type"
        if scheme in ("bioes", "biluo"):
            last, unit = prefixes[2], prefixes[3]
            if open_label is not None and (prefix not in ("I", last) or label != open_label):
                where = "the sentence ends" if i == len(tags) else f"{tag} follows {after}"
                return min(i, len(tags) - 1), f"{where}: the entity of type {open_label} is not closed with {last}-"
            if open_label is None and prefix in ("I", last):
                return i, f"{tag} follows {after}: an entity opens with B- (or is one token, {unit}-)"
            open_label = label if prefix in ("B", "I") else None
    return None


def resolve_scheme(path: Path, sentences: Sequence[Sentence], scheme: str) -> str:
    """The file's scheme (detected for "auto"), after checking that every sentence follows it."""
    if scheme not in ("auto", *SCHEMES):
        raise ConllFormatError(path, None, f"unknown tag scheme {scheme!r}: use auto, {', '.join(SCHEMES)}")
    resolved = detect_scheme(path, sentences) if scheme == "auto" else scheme
    for sentence in sentences:
        found = scheme_break(sentence.tags, resolved)
        if found:
            index, problem = found
            how = "forced" if scheme != "auto" else "detected"
            raise ConllFormatError(
                path, sentence.line(index), f"{problem} (the file is read as {resolved.upper()}, {how})"
            )
    return resolved


def sentence_biluo(tags: Sequence[str], scheme: str) -> List[str]:
    # Per sentence, so that IOB1 entities never join across a sentence boundary.
    if scheme == "bioes":
        return [{"S": "U", "E": "L"}.get(tag[0], tag[0]) + tag[1:] for tag in tags]
    if scheme == "biluo":
        return list(tags)
    return iob_to_biluo(list(tags))


def documents_to_docs(vocab: Vocab, split: Split, n_sents: int) -> Iterator[Doc]:
    """Group up to n_sents consecutive sentences of one document into a Doc with entities."""
    for document in split.documents:
        for start in range(0, len(document.sentences), n_sents):
            group = document.sentences[start : start + n_sents]
            words = [w for s in group for w in s.words]
            sent_starts = [i == 0 for s in group for i in range(len(s.words))]
            doc = Doc(vocab, words=words, sent_starts=sent_starts)
            biluo = [t for s in group for t in sentence_biluo(s.tags, split.scheme)]
            doc.ents = biluo_tags_to_spans(doc, biluo)
            yield doc


def find_split_file(conll_dir: Path, split: str, file_name: str = "") -> Path:
    names = (file_name,) if file_name else SPLIT_FILES[split]
    for name in names:
        if (conll_dir / name).is_file():
            return conll_dir / name
    expected = " or ".join(names)
    raise ConllFormatError(conll_dir, None, f"missing the {split} split: expected {expected}")


def read_conll_dir(
    conll_dir: Path, file_names: Optional[Dict[str, str]] = None, tag_column: int = -1, scheme: str = "auto"
) -> Dict[str, Split]:
    if not conll_dir.is_dir():
        raise ConllFormatError(conll_dir, None, "not a directory")
    paths = {split: find_split_file(conll_dir, split, (file_names or {}).get(split, "")) for split in SPLIT_FILES}
    return {split: read_conll_file(path, tag_column, scheme) for split, path in paths.items()}


def read_hub_dataset(hub_id: str, revision: Optional[str], scheme: str = "auto") -> Dict[str, Split]:
    """Load a dataset with `tokens` and `ner_tags` columns with `datasets`; the tag names come from the
    features. The hub copy of CoNLL-2003 has no -DOCSTART- lines, so each split is one long document
    of consecutive sentences."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    source = f"{hub_id}@{revision}" if revision else hub_id
    fix = (
        "Point --vars.conll_dir (--conll-dir for the script) at a local directory of CoNLL files "
        "(train.txt, valid.txt, test.txt), or --vars.hub_id at a local copy of the dataset."
    )
    try:
        dataset = load_dataset(hub_id, revision=revision or None)
    except ConnectionError as err:  # datasets raises it offline (HF_DATASETS_OFFLINE=1) and when the hub is unreachable
        raise SetupError(f"Cannot load the dataset {source}: the Hugging Face hub cannot be reached. {fix}") from err
    except DatasetNotFoundError as err:
        raise SetupError(f"Cannot load the dataset {source}: no such dataset on the hub or on disk. {fix}") from err
    splits = {}
    for split, hf_split in HF_SPLITS.items():
        where = Path(f"{hub_id}[{hf_split}]")
        if hf_split not in dataset:
            raise ConllFormatError(Path(hub_id), None, f"dataset has no {hf_split!r} split")
        data = dataset[hf_split]
        missing = {"tokens", "ner_tags"} - set(data.column_names)
        if missing:
            raise ConllFormatError(
                where, None, f"no {' or '.join(sorted(missing))} column (it has {', '.join(data.column_names)})"
            )
        names = getattr(data.features["ner_tags"].feature, "names", None)
        document = Document()
        for row_no, row in enumerate(data, start=1):
            if any(isinstance(tag, int) for tag in row["ner_tags"]) and not names:
                raise ConllFormatError(where, row_no, "integer ner_tags without label names (a ClassLabel feature)")
            tags = [names[tag] if isinstance(tag, int) else tag for tag in row["ner_tags"]]
            bad = next((tag for tag in tags if not TAG.fullmatch(tag)), None)
            if bad is not None:
                raise ConllFormatError(where, row_no, bad_tag(bad))
            if row["tokens"]:
                document.sentences.append(Sentence(list(row["tokens"]), tags, row_no, line_per_token=False))
        splits[split] = Split(where, [document], resolve_scheme(where, document.sentences, scheme))
    return splits


def write_outputs_atomically(docs_by_path: Dict[Path, List[Doc]], info_path: Path, info: Dict[str, object]) -> None:
    """Each path's DocBin and the corpus info, all or none: every file is written to a temporary name
    first, and only when all of them are written are they renamed, so a failure leaves every earlier
    file as it was."""
    with ExitStack() as stack:
        outputs = [(stack.enter_context(atomic_output(path, "wb")), docs) for path, docs in docs_by_path.items()]
        info_output = stack.enter_context(atomic_output(info_path, "w"))
        for output, docs in outputs:
            output.write(DocBin(attrs=["ORTH", "SPACY", "SENT_START", "ENT_IOB", "ENT_TYPE"], docs=docs).to_bytes())
        info_output.write(json.dumps(info, indent=2) + "\n")


def summarize(split: Split, docs: List[Doc], labels: Sequence[str]) -> Dict[str, object]:
    sentences = split.sentences
    entities = Counter(ent.label_ for doc in docs for ent in doc.ents)
    return {
        "documents": len(split.documents),
        "docs": len(docs),
        "sentences": len(sentences),
        "tokens": sum(len(s.words) for s in sentences),
        "entities": sum(entities.values()),
        "per_label": {label: entities[label] for label in labels},
    }


def data_name(conll_dir: Optional[Path], hub_id: str, name: str) -> str:
    return name or (conll_dir.resolve().name if conll_dir else hub_id)


def is_conll2003(name: str, labels: Iterable[str]) -> bool:
    """CoNLL-2003 by name (conll2003, CoNLL-2003, eriktks/conll2003...) and by its four labels."""
    return "conll2003" in re.sub(r"[^a-z0-9]", "", name.lower()) and set(labels) == CONLL2003_LABELS


def convert(
    output_dir: Path,
    conll_dir: Optional[Path] = None,
    hub_id: str = "eriktks/conll2003",
    revision: Optional[str] = "refs/convert/parquet",
    n_sents: int = 10,
    tag_column: int = -1,
    tag_scheme: str = "auto",
    file_names: Optional[Dict[str, str]] = None,
    name: str = "",
) -> Dict[str, Dict[str, object]]:
    """Read every split first, so that bad input stops the run before any file is written. A label that
    is in dev or test but not in train gets a warning: the model cannot learn it."""
    if n_sents < 1:
        raise ValueError("n_sents must be at least 1")
    if conll_dir:
        splits = read_conll_dir(conll_dir, file_names, tag_column, tag_scheme)
    else:
        splits = read_hub_dataset(hub_id, revision, tag_scheme)
    vocab = Vocab()
    docs = {split: list(documents_to_docs(vocab, data, n_sents)) for split, data in splits.items()}
    found = {split: {ent.label_ for doc in split_docs for ent in doc.ents} for split, split_docs in docs.items()}
    labels = sorted(set().union(*found.values()))
    for split in ("dev", "test"):
        for label in sorted(found[split] - found["train"]):
            typer.echo(
                f"Warning: {splits[split].source}: label {label} is in {split} but never in train "
                f"({splits['train'].source}); the model cannot learn it, and its {split} entities count as "
                "missed.",
                err=True,
            )
    summaries = {split: summarize(data, docs[split], labels) for split, data in splits.items()}
    name = data_name(conll_dir, hub_id, name)
    info = {
        "name": name,
        "source": str(conll_dir.resolve()) if conll_dir else (f"{hub_id}@{revision}" if revision else hub_id),
        "conll2003": is_conll2003(name, labels),
        "labels": sorted(found["train"]),
        "files": {split: str(data.source) for split, data in splits.items()},
        "tag_schemes": {split: data.scheme for split, data in splits.items()},
        "splits": summaries,
    }
    write_outputs_atomically(
        {output_dir / f"{split}.spacy": split_docs for split, split_docs in docs.items()},
        output_dir / "corpus.json",
        info,
    )
    return summaries


@app.command()
def main(
    output_dir: Path = typer.Argument(..., help="Directory for train.spacy, dev.spacy, test.spacy and corpus.json"),
    conll_dir: str = typer.Option(
        "", "--conll-dir", help="Local directory with one CoNLL-style file per split; empty means load the hub dataset"
    ),
    hub_id: str = typer.Option("eriktks/conll2003", help="Hugging Face dataset id (or a local dataset path)"),
    revision: str = typer.Option("refs/convert/parquet", help="Hub revision; the parquet branch needs no script"),
    n_sents: int = typer.Option(10, "--n-sents", "-n", min=1, help="Sentences per Doc, within one document"),
    tag_column: int = typer.Option(
        -1, help="The tag's column, counted from 0 (the word); negative counts from the end: -1 is the last"
    ),
    tag_scheme: str = typer.Option("auto", help="auto (detected per file), iob1, iob2, bioes or biluo"),
    train_file: str = typer.Option("", help="The training split's file name (default train.txt or eng.train)"),
    dev_file: str = typer.Option("", help="The dev split's file name (default valid.txt or eng.testa)"),
    test_file: str = typer.Option("", help="The test split's file name (default test.txt or eng.testb)"),
    name: str = typer.Option("", help="The data's name for the model card (default: the directory's name or hub id)"),
):
    """Convert a CoNLL-style corpus to spaCy DocBin files and print a summary per split."""
    source = conll_dir or f"{hub_id}@{revision}"
    file_names = {"train": train_file, "dev": dev_file, "test": test_file}
    try:
        with one_line_errors():
            if output_dir.exists() and not output_dir.is_dir():
                raise SetupError(f"OUTPUT_DIR {output_dir}: is a file, not a directory. Fix: give a directory.")
            check_output_path(output_dir / "train.spacy", "OUTPUT_DIR")
            summaries = convert(
                output_dir,
                Path(conll_dir) if conll_dir else None,
                hub_id,
                revision,
                n_sents,
                tag_column,
                tag_scheme,
                file_names,
                name,
            )
    except ConllFormatError as err:
        typer.echo(f"Cannot convert {source}: {err}", err=True)
        raise typer.Exit(1)
    counts = ["documents", "docs", "sentences", "tokens", "entities"]
    labels = list(summaries["train"]["per_label"])
    rows = [
        [split, *(summary[key] for key in counts), *summary["per_label"].values()]
        for split, summary in summaries.items()
    ]
    msg.good(f"Converted {source} to {output_dir}")
    msg.table(rows, header=["split", *counts, *labels], divider=True)


if __name__ == "__main__":
    app()
