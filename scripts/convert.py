"""Convert CoNLL-2003 into spaCy DocBin files: corpus/{train,dev,test}.spacy.

Two sources:
- a local directory of CoNLL files (train.txt/valid.txt/test.txt, or the original
  eng.train/eng.testa/eng.testb), 4 columns `WORD POS CHUNK NER`, IOB1 or IOB2 tags,
  `-DOCSTART-` lines between documents;
- the Hugging Face `datasets` copy (hub id + revision), which has no document boundaries.

A Doc is a group of up to `n_sents` consecutive sentences of one document, with sentence
starts set, so the transformer sees context across sentences.
"""
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import typer
from spacy.tokens import Doc, DocBin
from spacy.training import biluo_tags_to_spans, iob_to_biluo
from spacy.vocab import Vocab
from wasabi import msg

from project_util import SetupError, atomic_output, check_output_path, one_line_errors

LABELS = ("PER", "ORG", "LOC", "MISC")
VALID_TAGS = {"O"} | {f"{prefix}-{label}" for prefix in "BI" for label in LABELS}
# The HF `conll2003` ClassLabel order, used when a dataset carries plain integer tags.
HF_NER_TAG_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
SPLIT_FILES = {
    "train": ("train.txt", "eng.train"),
    "dev": ("valid.txt", "eng.testa"),
    "test": ("test.txt", "eng.testb"),
}
HF_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
DOCSTART = "-DOCSTART-"

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


@dataclass
class Document:
    sentences: List[Sentence] = field(default_factory=list)


def read_conll_file(path: Path) -> List[Document]:
    """Read one CoNLL-2003 file into documents of sentences, validating every line."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConllFormatError(path, None, f"cannot read file ({err.strerror})") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConllFormatError(path, line, f"not valid UTF-8 (byte 0x{raw[err.start]:02x})") from err
    if not text.strip():
        raise ConllFormatError(path, None, "file is empty")
    documents: List[Document] = [Document()]
    sentence = Sentence([], [])
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if sentence.words:
                documents[-1].sentences.append(sentence)
            sentence = Sentence([], [])
            if fields and documents[-1].sentences:
                documents.append(Document())
            continue
        if len(fields) != 4:
            raise ConllFormatError(
                path, line_no, f"expected 4 columns (WORD POS CHUNK NER), found {len(fields)}: {line!r}"
            )
        tag = fields[3]
        if tag not in VALID_TAGS:
            raise ConllFormatError(
                path, line_no, f"unknown NER tag {tag!r}; expected O or B-/I- with {', '.join(LABELS)}"
            )
        if not sentence.words:
            sentence.first_line = line_no
        sentence.words.append(fields[0])
        sentence.tags.append(tag)
    if sentence.words:
        documents[-1].sentences.append(sentence)
    documents = [doc for doc in documents if doc.sentences]
    if not documents:
        raise ConllFormatError(path, None, "file holds no tokens, only -DOCSTART- lines or blank lines")
    check_tag_scheme(path, [s for doc in documents for s in doc.sentences])
    return documents


def entity_starts_with_inside(tags: Sequence[str]) -> bool:
    """True where an entity opens with I- (after O or at sentence start): only IOB1 does that."""
    return any(tag.startswith("I-") and (i == 0 or tags[i - 1] == "O") for i, tag in enumerate(tags))


def check_tag_scheme(path: Path, sentences: Sequence[Sentence]) -> str:
    """Detect IOB1 or IOB2 for a file, and reject sequences that make no sense in it.

    IOB1 (the original CoNLL files) opens entities with I- and uses B- only between two
    adjacent entities of one type. IOB2 opens every entity with B-, so there an I- tag of
    another type straight after an entity is an error, not a new entity.
    """
    scheme = "iob1" if any(entity_starts_with_inside(s.tags) for s in sentences) else "iob2"
    if scheme == "iob2":
        for sentence in sentences:
            for i in range(1, len(sentence.tags)):
                prev, tag = sentence.tags[i - 1], sentence.tags[i]
                if tag.startswith("I-") and prev != "O" and prev[2:] != tag[2:]:
                    raise ConllFormatError(
                        path,
                        sentence.first_line + i,
                        f"{tag} follows {prev}: an I- tag of another type inside an entity "
                        "(IOB2 entities start with B-)",
                    )
    return scheme


def sentence_biluo(tags: Sequence[str]) -> List[str]:
    # Per sentence, so that IOB1 entities never join across a sentence boundary.
    return iob_to_biluo(list(tags))


def documents_to_docs(vocab: Vocab, documents: Iterable[Document], n_sents: int) -> Iterator[Doc]:
    """Group up to n_sents consecutive sentences of one document into a Doc with entities."""
    for document in documents:
        for start in range(0, len(document.sentences), n_sents):
            group = document.sentences[start : start + n_sents]
            words = [w for s in group for w in s.words]
            sent_starts = [i == 0 for s in group for i in range(len(s.words))]
            doc = Doc(vocab, words=words, sent_starts=sent_starts)
            biluo = [t for s in group for t in sentence_biluo(s.tags)]
            doc.ents = biluo_tags_to_spans(doc, biluo)
            yield doc


def find_split_file(conll_dir: Path, split: str) -> Path:
    for name in SPLIT_FILES[split]:
        if (conll_dir / name).is_file():
            return conll_dir / name
    expected = " or ".join(SPLIT_FILES[split])
    raise ConllFormatError(conll_dir, None, f"missing the {split} split: expected {expected}")


def read_conll_dir(conll_dir: Path) -> Dict[str, List[Document]]:
    if not conll_dir.is_dir():
        raise ConllFormatError(conll_dir, None, "not a directory")
    paths = {split: find_split_file(conll_dir, split) for split in SPLIT_FILES}
    return {split: read_conll_file(path) for split, path in paths.items()}


def read_hub_dataset(hub_id: str, revision: Optional[str]) -> Dict[str, List[Document]]:
    """Load CoNLL-2003 with `datasets`. The hub copy has no -DOCSTART- lines, so each split
    is one long document of consecutive sentences."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetNotFoundError

    source = f"{hub_id}@{revision}" if revision else hub_id
    fix = ("Point --vars.conll_dir (--conll-dir for the script) at a local CoNLL-2003 directory "
           "(train.txt, valid.txt, test.txt), or --vars.hub_id at a local copy of the dataset.")
    try:
        dataset = load_dataset(hub_id, revision=revision or None)
    except ConnectionError as err:  # datasets raises it offline (HF_DATASETS_OFFLINE=1) and when the hub is unreachable
        raise SetupError(f"Cannot load the dataset {source}: the Hugging Face hub cannot be reached. {fix}") from err
    except DatasetNotFoundError as err:
        raise SetupError(f"Cannot load the dataset {source}: no such dataset on the hub or on disk. {fix}") from err
    splits = {}
    for split, hf_split in HF_SPLITS.items():
        if hf_split not in dataset:
            raise ConllFormatError(Path(hub_id), None, f"dataset has no {hf_split!r} split")
        data = dataset[hf_split]
        feature = data.features["ner_tags"].feature
        names = getattr(feature, "names", None) or HF_NER_TAG_NAMES
        document = Document()
        for row_no, row in enumerate(data, start=1):
            tags = [names[t] if isinstance(t, int) else t for t in row["ner_tags"]]
            unknown = set(tags) - VALID_TAGS
            if unknown:
                raise ConllFormatError(Path(f"{hub_id}[{hf_split}]"), row_no, f"unknown NER tags {sorted(unknown)}")
            if row["tokens"]:
                document.sentences.append(Sentence(list(row["tokens"]), tags, row_no))
        check_tag_scheme(Path(f"{hub_id}[{hf_split}]"), document.sentences)
        splits[split] = [document]
    return splits


def write_docbins_atomically(docs_by_path: Dict[Path, List[Doc]]) -> None:
    """Each path's DocBin, all or none: every file is written to a temporary name first, and only
    when all of them are written are they renamed, so a failure leaves every earlier file as it was."""
    with ExitStack() as stack:
        outputs = [(stack.enter_context(atomic_output(path, "wb")), docs) for path, docs in docs_by_path.items()]
        for output, docs in outputs:
            output.write(DocBin(attrs=["ORTH", "SPACY", "SENT_START", "ENT_IOB", "ENT_TYPE"], docs=docs).to_bytes())


def summarize(documents: List[Document], docs: List[Doc]) -> Dict[str, object]:
    sentences = [s for d in documents for s in d.sentences]
    entities = Counter(ent.label_ for doc in docs for ent in doc.ents)
    return {
        "documents": len(documents),
        "docs": len(docs),
        "sentences": len(sentences),
        "tokens": sum(len(s.words) for s in sentences),
        "entities": sum(entities.values()),
        **{label: entities[label] for label in LABELS},
    }


def convert(
    output_dir: Path,
    conll_dir: Optional[Path] = None,
    hub_id: str = "eriktks/conll2003",
    revision: Optional[str] = "refs/convert/parquet",
    n_sents: int = 10,
) -> Dict[str, Dict[str, object]]:
    """Read every split first, so that bad input stops the run before any file is written."""
    if n_sents < 1:
        raise ValueError("n_sents must be at least 1")
    splits = read_conll_dir(conll_dir) if conll_dir else read_hub_dataset(hub_id, revision)
    vocab = Vocab()
    docs = {split: list(documents_to_docs(vocab, documents, n_sents)) for split, documents in splits.items()}
    write_docbins_atomically({output_dir / f"{split}.spacy": split_docs for split, split_docs in docs.items()})
    return {split: summarize(documents, docs[split]) for split, documents in splits.items()}


@app.command()
def main(
    output_dir: Path = typer.Argument(..., help="Directory for train.spacy, dev.spacy and test.spacy"),
    conll_dir: str = typer.Option(
        "", "--conll-dir", help="Local CoNLL-2003 directory; empty means load the hub dataset"
    ),
    hub_id: str = typer.Option("eriktks/conll2003", help="Hugging Face dataset id (or a local dataset path)"),
    revision: str = typer.Option("refs/convert/parquet", help="Hub revision; the parquet branch needs no script"),
    n_sents: int = typer.Option(10, "--n-sents", "-n", min=1, help="Sentences per Doc, within one document"),
):
    """Convert CoNLL-2003 to spaCy DocBin files and print a summary per split."""
    source = conll_dir or f"{hub_id}@{revision}"
    try:
        with one_line_errors():
            if output_dir.exists() and not output_dir.is_dir():
                raise SetupError(f"OUTPUT_DIR {output_dir}: is a file, not a directory. Fix: give a directory.")
            check_output_path(output_dir / "train.spacy", "OUTPUT_DIR")
            summaries = convert(output_dir, Path(conll_dir) if conll_dir else None, hub_id, revision, n_sents)
    except ConllFormatError as err:
        typer.echo(f"Cannot convert CoNLL-2003: {err}", err=True)
        raise typer.Exit(1)
    header = ["split", "documents", "docs", "sentences", "tokens", "entities", *LABELS]
    rows = [[split, *(summary[key] for key in header[1:])] for split, summary in summaries.items()]
    msg.good(f"Converted {source} to {output_dir}")
    msg.table(rows, header=header, divider=True)


if __name__ == "__main__":
    app()
