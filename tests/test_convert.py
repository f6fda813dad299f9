from pathlib import Path

import pytest
from conftest import conll_text, write_conll_dir
from spacy.tokens import DocBin
from spacy.vocab import Vocab

import convert
from convert import ConllFormatError, read_conll_file

SHARED_CONLL = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def load_docs(path: Path):
    return list(DocBin().from_disk(path).get_docs(Vocab()))


def ents(doc):
    return [(ent.text, ent.label_) for ent in doc.ents]


def write(tmp_path: Path, text: str, name: str = "train.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


IOB2_SENTENCE = [("Bill", "B-PER"), ("Gates", "I-PER"), ("met", "O"), ("Steffi", "B-PER"), ("Graf", "I-PER"),
                 ("and", "O"), ("Angela", "B-PER"), ("Merkel", "I-PER"), ("in", "O"), ("New", "B-LOC"),
                 ("York", "I-LOC"), ("Microsoft", "B-ORG"), (".", "O")]
# The same sentence in IOB1, as in the original eng.train: I- opens entities, B- only
# separates two adjacent entities of one type.
IOB1_SENTENCE = [("Bill", "I-PER"), ("Gates", "I-PER"), ("met", "O"), ("Steffi", "I-PER"), ("Graf", "I-PER"),
                 ("and", "O"), ("Angela", "I-PER"), ("Merkel", "I-PER"), ("in", "O"), ("New", "I-LOC"),
                 ("York", "I-LOC"), ("Microsoft", "I-ORG"), (".", "O")]
EXPECTED_ENTS = [("Bill Gates", "PER"), ("Steffi Graf", "PER"), ("Angela Merkel", "PER"), ("New York", "LOC"),
                 ("Microsoft", "ORG")]


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
    assert [len(d.sentences) for d in parsed] == [5, 5]
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


def test_hub_dataset_source(tmp_path):
    """The `datasets` code path, on a local parquet copy laid out like the hub's parquet branch."""
    datasets = pytest.importorskip("datasets")
    names = convert.HF_NER_TAG_NAMES
    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
    })
    rows = {"tokens": [[w for w, _ in IOB2_SENTENCE], ["Reuters", "reports"]],
            "ner_tags": [[names.index(t) for _, t in IOB2_SENTENCE], [names.index("B-ORG"), 0]]}
    hub_dir = tmp_path / "conll2003" / "conll2003"
    hub_dir.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(hub_dir / f"{split}-00000-of-00001.parquet"))
    summaries = convert.convert(tmp_path / "corpus", hub_id=str(tmp_path / "conll2003"), revision="", n_sents=10)
    assert summaries["test"]["sentences"] == 2 and summaries["test"]["entities"] == 6
    docs = load_docs(tmp_path / "corpus" / "train.spacy")
    assert ents(docs[0]) == EXPECTED_ENTS + [("Reuters", "ORG")]


@pytest.mark.parametrize(
    "text,line,problem",
    [
        ("-DOCSTART- -X- -X- O\n\nEU NNP B-ORG\n", 3, "expected 4 columns"),
        ("EU NNP B-NP B-FOO\n", 1, "unknown NER tag 'B-FOO'"),
        ("EU NNP B-NP b-org\n", 1, "unknown NER tag 'b-org'"),
        ("Bill NNP B-NP B-PER\nGates NNP I-NP I-LOC\n", 2, "I-LOC follows B-PER"),
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
        f.write("Oops NNP B-NP B-FOO\n")
    with pytest.raises(ConllFormatError, match="test.txt:.*B-FOO"):
        convert.convert(corpus, conll_dir)
    assert {p.name: p.read_bytes() for p in corpus.iterdir()} == before


def test_cli_reports_bad_input_and_exits_nonzero(tmp_path):
    from typer.testing import CliRunner

    conll_dir = write_conll_dir(tmp_path / "conll", n_docs=(1, 1, 1))
    (conll_dir / "train.txt").write_text("EU NNP B-NP B-FOO\n", encoding="utf-8")
    result = CliRunner().invoke(convert.app, [str(tmp_path / "corpus"), "--conll-dir", str(conll_dir)])
    assert result.exit_code == 1
    assert "train.txt:1: unknown NER tag 'B-FOO'" in result.output
    assert not (tmp_path / "corpus").exists()


@pytest.mark.skipif(not SHARED_CONLL.is_dir(), reason="the full CoNLL-2003 copy is not beside the repo")
def test_real_conll2003_counts(tmp_path):
    summaries = convert.convert(tmp_path, SHARED_CONLL, n_sents=10)
    expected = {
        "train": {"sentences": 14041, "tokens": 203621, "entities": 23499,
                  "PER": 6600, "ORG": 6321, "LOC": 7140, "MISC": 3438},
        "dev": {"sentences": 3250, "tokens": 51362, "entities": 5942},
        "test": {"sentences": 3453, "tokens": 46435, "entities": 5648},
    }
    for split, counts in expected.items():
        assert {key: summaries[split][key] for key in counts} == counts
    assert summaries["train"]["documents"] == 946
