import hashlib
import json
from pathlib import Path

import pytest
from conftest import conll_text, two_column_text, write_conll_dir
from spacy.tokens import DocBin
from spacy.vocab import Vocab

from scripts import convert
from scripts.convert import ConllFormatError, read_conll_file

SHARED_CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def load_docs(path: Path):
    return list(DocBin().from_disk(path).get_docs(Vocab()))


def ents(doc):
    return [(ent.text, ent.label_) for ent in doc.ents]


def write(tmp_path: Path, text: str, name: str = "train.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


IOB2_SENTENCE = [
    ("Bill", "B-PER"),
    ("Gates", "I-PER"),
    ("met", "O"),
    ("Steffi", "B-PER"),
    ("Graf", "I-PER"),
    ("and", "O"),
    ("Angela", "B-PER"),
    ("Merkel", "I-PER"),
    ("in", "O"),
    ("New", "B-LOC"),
    ("York", "I-LOC"),
    ("Microsoft", "B-ORG"),
    (".", "O"),
]
# The same sentence in IOB1, as in the original eng.train: I- opens entities, B- only
# separates two adjacent entities of one type.
IOB1_SENTENCE = [
    ("Bill", "I-PER"),
    ("Gates", "I-PER"),
    ("met", "O"),
    ("Steffi", "I-PER"),
    ("Graf", "I-PER"),
    ("and", "O"),
    ("Angela", "I-PER"),
    ("Merkel", "I-PER"),
    ("in", "O"),
    ("New", "I-LOC"),
    ("York", "I-LOC"),
    ("Microsoft", "I-ORG"),
    (".", "O"),
]
EXPECTED_ENTS = [
    ("Bill Gates", "PER"),
    ("Steffi Graf", "PER"),
    ("Angela Merkel", "PER"),
    ("New York", "LOC"),
    ("Microsoft", "ORG"),
]


def convert_sentence(tmp_path, sentence):
    path = write(tmp_path, conll_text([[sentence]]))
    docs = list(convert.documents_to_docs(Vocab(), read_conll_file(path), n_sents=10))
    assert len(docs) == 1
    return docs[0]


def test_iob2_and_iob1_give_the_same_entities(tmp_path):
    assert ents(convert_sentence(tmp_path, IOB2_SENTENCE)) == EXPECTED_ENTS
    assert ents(convert_sentence(tmp_path, IOB1_SENTENCE)) == EXPECTED_ENTS


def test_iob1_b_tag_separates_adjacent_entities_of_one_type(tmp_path):
    sentence = [("Germany", "I-LOC"), ("France", "B-LOC"), ("and", "O"), ("UN", "I-ORG"), ("EU", "I-MISC")]
    doc = convert_sentence(tmp_path, sentence)
    assert ents(doc) == [("Germany", "LOC"), ("France", "LOC"), ("UN", "ORG"), ("EU", "MISC")]


def test_iob1_entities_do_not_join_across_sentences(tmp_path):
    path = write(tmp_path, conll_text([[[("Paris", "I-LOC")], [("Rome", "I-LOC"), ("wins", "O")]]]))
    doc = next(convert.documents_to_docs(Vocab(), read_conll_file(path), n_sents=10))
    assert ents(doc) == [("Paris", "LOC"), ("Rome", "LOC")]
    assert [s.text for s in doc.sents] == ["Paris", "Rome wins"]


def test_documents_and_sentence_groups(tmp_path):
    sentences = [[(f"w{d}{s}", "O"), ("Reuters", "B-ORG")] for d in range(2) for s in range(5)]
    documents = [sentences[:5], sentences[5:]]
    path = write(tmp_path, conll_text(documents))
    parsed = read_conll_file(path)
    assert [len(d.sentences) for d in parsed.documents] == [5, 5]
    docs = list(convert.documents_to_docs(Vocab(), parsed, n_sents=2))
    # 5 sentences per document in groups of 2: 2 + 2 + 1, never mixing the two documents.
    assert [len(list(doc.sents)) for doc in docs] == [2, 2, 1, 2, 2, 1]
    assert docs[2].text.startswith("w04") and docs[3].text.startswith("w10")
    assert all(doc[0].is_sent_start for doc in docs)


def test_convert_dir_writes_docbins_and_summary(tmp_path):
    conll_dir = write_conll_dir(tmp_path / "conll", n_docs=(3, 2, 2), sents_per_doc=3)
    summaries = convert.convert(tmp_path / "corpus", conll_dir, n_sents=2)
    assert summaries["train"]["documents"] == 3 and summaries["train"]["sentences"] == 9
    assert summaries["dev"]["docs"] == 4
    for split in ("train", "dev", "test"):
        docs = load_docs(tmp_path / "corpus" / f"{split}.spacy")
        assert sum(len(doc) for doc in docs) == summaries[split]["tokens"]
        assert sum(len(doc.ents) for doc in docs) == summaries[split]["entities"]
        assert {ent.label_ for doc in docs for ent in doc.ents} == {"PER", "ORG", "LOC", "MISC"}
    assert not list((tmp_path / "corpus").glob("*.tmp"))


def test_original_file_names_are_accepted(tmp_path):
    source = write_conll_dir(tmp_path / "hf", n_docs=(2, 1, 1))
    original = tmp_path / "orig"
    original.mkdir()
    for hf_name, orig_name in (("train.txt", "eng.train"), ("valid.txt", "eng.testa"), ("test.txt", "eng.testb")):
        (original / orig_name).write_bytes((source / hf_name).read_bytes())
    assert convert.convert(tmp_path / "a", original) == convert.convert(tmp_path / "b", source)


def write_hub_copy(tmp_path: Path, tag_names, rows) -> str:
    """A local parquet copy laid out like the hub's parquet branch, its tags a ClassLabel feature."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=tag_names)),
        }
    )
    rows = {
        "tokens": [[w for w, _ in row] for row in rows],
        "ner_tags": [[tag_names.index(t) for _, t in row] for row in rows],
    }
    hub_dir = tmp_path / "hub" / "data"
    hub_dir.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(hub_dir / f"{split}-00000-of-00001.parquet"))
    return str(tmp_path / "hub")


def test_hub_dataset_source(tmp_path):
    """The `datasets` code path with CoNLL-2003's tag names, in their ClassLabel order."""
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    hub = write_hub_copy(tmp_path, names, [IOB2_SENTENCE, [("Reuters", "B-ORG"), ("reports", "O")]])
    summaries = convert.convert(tmp_path / "corpus", hub_id=hub, revision="", n_sents=10)
    assert summaries["test"]["sentences"] == 2 and summaries["test"]["entities"] == 6
    docs = load_docs(tmp_path / "corpus" / "train.spacy")
    assert ents(docs[0]) == EXPECTED_ENTS + [("Reuters", "ORG")]


def test_hub_dataset_labels_come_from_its_features(tmp_path):
    """Another dataset with tokens and ner_tags: its own label names, in its own order, in BIOES."""
    names = ["O", "S-GPE", "B-PRODUCT", "E-PRODUCT", "B-PERSON", "I-PERSON", "E-PERSON"]
    row = [
        ("Ada", "B-PERSON"),
        ("Byron", "E-PERSON"),
        ("bought", "O"),
        ("Windows", "B-PRODUCT"),
        ("95", "E-PRODUCT"),
        ("in", "O"),
        ("Paris", "S-GPE"),
    ]
    summaries = convert.convert(tmp_path / "corpus", hub_id=write_hub_copy(tmp_path, names, [row]), revision="")
    assert summaries["train"]["per_label"] == {"GPE": 1, "PERSON": 1, "PRODUCT": 1}
    assert ents(load_docs(tmp_path / "corpus" / "dev.spacy")[0]) == [
        ("Ada Byron", "PERSON"),
        ("Windows 95", "PRODUCT"),
        ("Paris", "GPE"),
    ]
    info = json.loads((tmp_path / "corpus" / "corpus.json").read_text())
    assert info["tag_schemes"] == {"train": "bioes", "dev": "bioes", "test": "bioes"}
    assert info["labels"] == ["GPE", "PERSON", "PRODUCT"] and not info["conll2003"]


@pytest.mark.parametrize(
    "text,line,problem",
    [
        ("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP\n", 4, "3 columns where line 3 has 4"),
        ("EU NNP B-NP ORG\n", 1, "tag 'ORG' is not O or a prefix"),
        ("EU NNP B-NP b-org\n", 1, "tag 'b-org' is not O or a prefix"),
        ("EU\n", 1, "one column only"),
        (
            "Bill NNP B-NP B-PER\nGates NNP I-NP I-LOC\n",
            2,
            "mixes tag schemes: I-LOC after B-PER opens an entity with I-",
        ),
        ("", None, "file is empty"),
        ("\n\n  \n", None, "file is empty"),
        ("-DOCSTART- -X- -X- O\n\n", None, "holds no tokens"),
    ],
)
def test_bad_input_names_file_line_and_problem(tmp_path, text, line, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConllFormatError) as err:
        read_conll_file(path)
    where = f"{path}:{line}:" if line else f"{path}:"
    assert str(err.value).startswith(where)
    assert problem in str(err.value)


def test_bad_encoding_names_the_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"EU NNP B-NP B-ORG\n\nK\xf6ln NNP B-NP B-LOC\n")
    with pytest.raises(ConllFormatError, match=r"train.txt:3: not valid UTF-8"):
        read_conll_file(path)


def test_missing_split_is_named(tmp_path):
    conll_dir = write_conll_dir(tmp_path / "conll", n_docs=(1, 1, 1))
    (conll_dir / "valid.txt").unlink()
    with pytest.raises(ConllFormatError, match="missing the dev split: expected valid.txt or eng.testa"):
        convert.convert(tmp_path / "corpus", conll_dir)


def test_bad_input_leaves_existing_output_untouched(tmp_path):
    conll_dir = write_conll_dir(tmp_path / "conll", n_docs=(2, 1, 1))
    corpus = tmp_path / "corpus"
    convert.convert(corpus, conll_dir)
    before = {p.name: p.read_bytes() for p in corpus.iterdir()}
    with (conll_dir / "test.txt").open("a", encoding="utf-8") as f:
        f.write("Oops NNP B-NP FOO\n")
    with pytest.raises(ConllFormatError, match="test.txt:.*'FOO'"):
        convert.convert(corpus, conll_dir)
    assert {p.name: p.read_bytes() for p in corpus.iterdir()} == before


def test_cli_reports_bad_input_and_exits_nonzero(tmp_path):
    from typer.testing import CliRunner

    conll_dir = write_conll_dir(tmp_path / "conll", n_docs=(1, 1, 1))
    (conll_dir / "train.txt").write_text("EU NNP B-NP FOO\n", encoding="utf-8")
    result = CliRunner().invoke(convert.app, [str(tmp_path / "corpus"), "--conll-dir", str(conll_dir)])
    assert result.exit_code == 1
    assert "train.txt:1: tag 'FOO' is not O" in result.output
    assert not (tmp_path / "corpus").exists()


# Doc for Doc (words, spaces, sentence starts, entities) of what convert wrote from ../shared's CoNLL-2003
# with n_sents=10 before it read other corpora (commit 9173f4e), hashed per split: the CoNLL-2003 files
# must still convert to exactly those Docs.
CONLL2003_DOC_DIGESTS = {
    "train": "7ace8cadf19600858abce064fab64a23bc80ab966f9a4e2ea9cf8b6e240d2b9d",
    "dev": "4ccab7e72896a08f6510041ea0ca13e847cdab79c25c8520a7d6775fddfec419",
    "test": "37688b0abbae3d5eb98e17d9fe2922850b8eda4bd0fe7d2c11e3ad48edacb517",
}


def doc_digest(docs) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(
            json.dumps(
                [
                    [t.text for t in doc],
                    [t.whitespace_ for t in doc],
                    [t.is_sent_start for t in doc],
                    [(e.start, e.end, e.label_) for e in doc.ents],
                ]
            ).encode()
        )
    return digest.hexdigest()


@pytest.mark.skipif(not SHARED_CONLL.is_dir(), reason="the full CoNLL-2003 copy is not beside the repo")
def test_real_conll2003_counts_and_docs(tmp_path):
    summaries = convert.convert(tmp_path, SHARED_CONLL, n_sents=10)
    expected = {
        "train": {
            "sentences": 14041,
            "tokens": 203621,
            "entities": 23499,
            "per_label": {"PER": 6600, "ORG": 6321, "LOC": 7140, "MISC": 3438},
        },
        "dev": {"sentences": 3250, "tokens": 51362, "entities": 5942},
        "test": {"sentences": 3453, "tokens": 46435, "entities": 5648},
    }
    for split, counts in expected.items():
        assert {key: summaries[split][key] for key in counts} == counts
        assert doc_digest(load_docs(tmp_path / f"{split}.spacy")) == CONLL2003_DOC_DIGESTS[split]
    assert summaries["train"]["documents"] == 946
    info = json.loads((tmp_path / "corpus.json").read_text())
    assert info["conll2003"] and info["tag_schemes"] == {"train": "iob2", "dev": "iob2", "test": "iob2"}


# One sentence in each tag scheme: a two-word entity at the start, three adjacent entities of one type,
# two adjacent of different types, and a three-word entity at the end; then a one-word sentence.
SCHEME_WORDS = ["Ada", "Lovelace", "visited", "Paris", "London", "Rome", "Monday", "with", "an", "iPhone", "15", "Pro"]
SCHEME_TAGS = {
    "iob2": "B-PERSON I-PERSON O B-GPE B-GPE B-GPE B-DATE O O B-PRODUCT I-PRODUCT I-PRODUCT",
    "iob1": "I-PERSON I-PERSON O I-GPE B-GPE B-GPE I-DATE O O I-PRODUCT I-PRODUCT I-PRODUCT",
    "bioes": "B-PERSON E-PERSON O S-GPE S-GPE S-GPE S-DATE O O B-PRODUCT I-PRODUCT E-PRODUCT",
    "biluo": "B-PERSON L-PERSON O U-GPE U-GPE U-GPE U-DATE O O B-PRODUCT I-PRODUCT L-PRODUCT",
}
SINGLE = {"iob2": "B-GPE", "iob1": "I-GPE", "bioes": "S-GPE", "biluo": "U-GPE"}
SCHEME_ENTS = [
    ("Ada Lovelace", "PERSON"),
    ("Paris", "GPE"),
    ("London", "GPE"),
    ("Rome", "GPE"),
    ("Monday", "DATE"),
    ("iPhone 15 Pro", "PRODUCT"),
    ("Berlin", "GPE"),
]


def two_column_file(tmp_path: Path, sentences, name: str = "train.txt") -> Path:
    return write(tmp_path, two_column_text(sentences), name)


def scheme_sentences(scheme: str):
    return [list(zip(SCHEME_WORDS, SCHEME_TAGS[scheme].split())), [("Berlin", SINGLE[scheme])]]


@pytest.mark.parametrize("scheme", ["iob2", "iob1", "bioes", "biluo"])
def test_every_tag_scheme_gives_the_same_entities(tmp_path, scheme):
    path = two_column_file(tmp_path, scheme_sentences(scheme))
    for forced in ("auto", scheme):
        split = read_conll_file(path, scheme=forced)
        assert split.scheme == scheme
        docs = list(convert.documents_to_docs(Vocab(), split, n_sents=10))
        assert [ents(doc) for doc in docs] == [SCHEME_ENTS]
        assert [s.text for s in docs[0].sents][-1] == "Berlin"


def mixed_file(tmp_path: Path, replace: dict) -> Path:
    """The IOB2 or BIOES sample with some of its tags replaced: {(sentence, word): tag}."""
    sentences = [list(s) for s in scheme_sentences(replace.pop("scheme"))]
    for (s, w), tag in replace.items():
        sentences[s][w] = (sentences[s][w][0], tag)
    return two_column_file(tmp_path, sentences * 2)


@pytest.mark.parametrize(
    "scheme,replace,line,message",
    [
        # One stray I- after O in an IOB2 file, which today would have read the whole file as IOB1.
        (
            "iob2",
            {(0, 6): "I-DATE"},
            7,
            "mixes tag schemes: I-DATE after B-GPE opens an entity with I-, as only IOB1 "
            "does (lines 7, 22), but B-PERSON after the sentence start opens an entity with B-, as IOB1 never does (8 "
            "lines from line 1). Fix: write the tags in one scheme",
        ),
        # The B-PER I-LOC: in IOB2 not two entities but a mistake.
        ("iob2", {(1, 0): "I-GPE"}, 14, "mixes tag schemes: I-GPE after the sentence start opens an entity with I-"),
        (
            "bioes",
            {(0, 1): "L-PERSON"},
            2,
            "mixes tag schemes: L-PERSON after B-PERSON is a BILUO tag (L- or U-) "
            "(lines 2, 17), but S-GPE after O is a BIOES tag (S- or E-) (12 lines from line 4)",
        ),
        # An IOB2 entity in a BIOES file: it is never closed.
        (
            "bioes",
            {(0, 11): "I-PRODUCT"},
            12,
            "the sentence ends: the entity of type PRODUCT is not closed with E- (the file is read as BIOES, detected)",
        ),
        ("bioes", {(1, 0): "B-GPE"}, 14, "the sentence ends: the entity of type GPE is not closed with E-"),
    ],
)
def test_a_file_that_mixes_schemes_is_reported_with_its_lines(tmp_path, scheme, replace, line, message):
    path = mixed_file(tmp_path, {"scheme": scheme, **replace})
    with pytest.raises(ConllFormatError) as err:
        read_conll_file(path)
    assert str(err.value).startswith(f"{path}:{line}: {message}")
    assert "\n" not in str(err.value)


def test_a_forced_scheme_names_the_first_tag_that_breaks_it(tmp_path):
    path = two_column_file(tmp_path, scheme_sentences("iob1"))
    with pytest.raises(ConllFormatError) as err:
        read_conll_file(path, scheme="iob2")
    assert str(err.value) == (
        f"{path}:1: I-PERSON follows the sentence start: an I- tag continues an entity of its "
        "type (IOB2 entities start with B-) (the file is read as IOB2, forced)"
    )
    with pytest.raises(ConllFormatError, match=r"train.txt:2: L-PERSON: BIOES has no L- tags"):
        read_conll_file(two_column_file(tmp_path, scheme_sentences("biluo")), scheme="bioes")


def test_a_label_only_in_dev_gets_a_warning_that_names_it(tmp_path):
    from typer.testing import CliRunner

    corpus_dir = tmp_path / "data"
    corpus_dir.mkdir()
    two_column_file(corpus_dir, scheme_sentences("bioes"), "train.txt")
    two_column_file(corpus_dir, [[("Ada", "S-PERSON"), ("drank", "O"), ("Coca-Cola", "S-DRINK")]], "valid.txt")
    two_column_file(corpus_dir, scheme_sentences("bioes"), "test.txt")
    result = CliRunner().invoke(convert.app, [str(tmp_path / "corpus"), "--conll-dir", str(corpus_dir)])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"Warning: {corpus_dir / 'valid.txt'}: label DRINK is in dev but never in train ({corpus_dir / 'train.txt'}); "
        "the model cannot learn it, and its dev entities count as missed."
    ]
    # The summary has a column per label found, in any split.
    header = next(line for line in result.stdout.splitlines() if line.startswith("split"))
    assert header.split()[-5:] == ["DATE", "DRINK", "GPE", "PERSON", "PRODUCT"]


def test_file_names_tag_column_bom_and_words_with_spaces(tmp_path):
    """Split files named by the user, three tab-separated columns with the tag in the middle, a byte-order
    mark, words with a space inside, and no -DOCSTART-: one document per file."""
    corpus_dir = tmp_path / "data"
    corpus_dir.mkdir()
    lines = "\ufeffNew York\tB-GPE\tNNP\nis\tO\tVBZ\nbig\tO\tJJ\n\nAda\tB-PERSON\tNNP\n\n"
    for name in ("a.train", "a.dev", "a.test"):
        (corpus_dir / name).write_text(lines, encoding="utf-8")
    names = {"train": "a.train", "dev": "a.dev", "test": "a.test"}
    summaries = convert.convert(
        tmp_path / "corpus", corpus_dir, tag_column=1, n_sents=1, file_names=names, name="city-news"
    )
    assert summaries["train"]["documents"] == 1 and summaries["train"]["docs"] == 2
    docs = load_docs(tmp_path / "corpus" / "test.spacy")
    assert [t.text for t in docs[0]] == ["New York", "is", "big"]
    assert [ents(doc) for doc in docs] == [[("New York", "GPE")], [("Ada", "PERSON")]]
    info = json.loads((tmp_path / "corpus" / "corpus.json").read_text())
    assert info["name"] == "city-news" and info["files"]["dev"] == str(corpus_dir / "a.dev")
    with pytest.raises(ConllFormatError, match=r"a.train:1: tag column 3 is not among this file's 3 columns"):
        convert.convert(tmp_path / "corpus", corpus_dir, tag_column=3, file_names=names)
    with pytest.raises(ConllFormatError, match=r"missing the dev split: expected b.dev"):
        convert.convert(tmp_path / "corpus", corpus_dir, file_names={**names, "dev": "b.dev"})
