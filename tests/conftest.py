"""Offline fixtures: a tiny random DistilBERT with a WordPiece vocabulary trained on the fly,
and small CoNLL-2003 samples written by the tests."""

import importlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU that spaCy can use (CuPy); skipped elsewhere")


PEOPLE = ["Bill Gates", "Angela Merkel", "John Smith", "Maria Lopez", "Peter Blake", "Steffi Graf"]
ORGS = ["Microsoft", "Reuters", "European Union", "Bayern Munich", "United Nations", "Ajax"]
PLACES = ["Seattle", "Washington", "Germany", "New York", "London", "Brazil"]
MISCS = ["German", "British", "Olympic", "Dutch", "French", "World Cup"]
VERBS = ["visited", "met", "joined", "left", "praised", "criticised"]
FILLERS = ["on", "Monday", "in", "the", "report", "said", "after", "talks", "with", "officials"]


def entity_tokens(name: str, label: str) -> List[Tuple[str, str]]:
    words = name.split()
    return [(w, ("B-" if i == 0 else "I-") + label) for i, w in enumerate(words)]


def make_sentence(rng: random.Random) -> List[Tuple[str, str]]:
    """A short sentence with PER, ORG, LOC and MISC entities, IOB2 tags."""
    tokens = entity_tokens(rng.choice(PEOPLE), "PER")
    tokens += [(rng.choice(VERBS), "O")]
    tokens += entity_tokens(rng.choice(ORGS), "ORG")
    tokens += [("in", "O")] + entity_tokens(rng.choice(PLACES), "LOC")
    tokens += [(w, "O") for w in rng.sample(FILLERS, 2)]
    tokens += entity_tokens(rng.choice(MISCS), "MISC") + [("fans", "O"), (".", "O")]
    return tokens


def conll_text(documents: Sequence[Sequence[Sequence[Tuple[str, str]]]]) -> str:
    """CoNLL-2003 layout: -DOCSTART- before each document, a blank line after each sentence."""
    lines = []
    for document in documents:
        lines += ["-DOCSTART- -X- -X- O", ""]
        for sentence in document:
            lines += [f"{word} NNP B-NP {tag}" for word, tag in sentence]
            lines.append("")
    return "\n".join(lines) + "\n"


def two_column_text(sentences: Sequence[Sequence[Tuple[str, str]]]) -> str:
    """`word<TAB>tag` lines, a blank line after each sentence, no -DOCSTART-."""
    return "".join("".join(f"{word}\t{tag}\n" for word, tag in sentence) + "\n" for sentence in sentences)


def write_conll_dir(
    path: Path, n_docs: Tuple[int, int, int] = (8, 3, 3), sents_per_doc: int = 4, seed: int = 0
) -> Path:
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    for name, count in zip(("train.txt", "valid.txt", "test.txt"), n_docs):
        docs = [[make_sentence(rng) for _ in range(sents_per_doc)] for _ in range(count)]
        (path / name).write_text(conll_text(docs), encoding="utf-8")
    return path


def build_tiny_distilbert(path: Path) -> Path:
    """A 1-layer random DistilBERT with a cased WordPiece vocabulary trained on the sample words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast

    corpus = [" ".join(PEOPLE + ORGS + PLACES + MISCS + VERBS + FILLERS + ["fans", "."])] * 20
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=special))
    path.mkdir(parents=True, exist_ok=True)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (path / "vocab.txt").write_text("\n".join(token for token, _ in vocab) + "\n", encoding="utf-8")
    DistilBertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=False).save_pretrained(path)
    config = DistilBertConfig(
        vocab_size=len(vocab), dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=512
    )
    DistilBertModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_transformer(tmp_path_factory) -> Path:
    return build_tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))


@pytest.fixture(scope="session")
def conll_dir(tmp_path_factory) -> Path:
    """A CoNLL-2003 look-alike: its format, its four labels, and a directory named for it, as the
    model card recognises CoNLL-2003."""
    return write_conll_dir(tmp_path_factory.mktemp("conll2003"))


PROJECT_FILES = ["project.yml", "configs", "scripts", "model_code", "annotate", "benchmarks", "examples"]
# project.yml's vars.code: the packaged code.
CODE = ",".join(
    f"model_code/{name}.py"
    for name in (
        "seqeval_scorer",
        "transformer_model",
        "precision",
        "length_groups",
        "array_batches",
        "wordpiece_encoding",
        "fused_adam",
        "entity_confidence",
        "long_texts",
    )
)


def import_model_code() -> None:
    """Import the packaged code (CODE) as the model_code package's modules: their registered functions."""
    for path in CODE.split(","):
        importlib.import_module(path.removesuffix(".py").replace("/", "."))


def pipeline_with_component(project: Path, root: Path, components: str, add_pipe: str) -> Path:
    """PROJECT's release pipeline with a test component, `nlp.add_pipe(ADD_PIPE)`, saved as ROOT/model;
    COMPONENTS, the code that registers it, goes to ROOT/test_components.py (for --code)."""
    (root / "test_components.py").write_text(components)
    model = root / "model"
    script = f"""
import sys; sys.path.append({str(root)!r})
import test_components
from scripts.project_util import load_pipeline  # imports the packaged code the pipeline names
nlp = load_pipeline("training/model-release")
nlp.add_pipe({add_pipe})
nlp.to_disk({str(model)!r})
"""
    run_checked([sys.executable, "-c", script], cwd=project)
    return model


def run_checked(cmd, cwd, env=None, input_text=None):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, input=input_text)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def project_run_all(project_dir: Path, transformer: Path, conll: Path, **variables: str) -> subprocess.CompletedProcess:
    """`spacy project run all` with the tiny model: a learning rate and batch size that let a
    1-layer model learn the sample data in 60 steps; VARIABLES set further project variables."""
    settings = {
        "transformer": transformer,
        "conll_dir": conll,
        "gpu_id": -1,
        "max_steps": 60,
        "eval_frequency": 20,
        "n_sents": 2,
        "learn_rate": 1e-3,
        "warmup_steps": 5,
        "batch_size": 300,
        "package_version": "0.0.1",
        **variables,
    }
    return run_checked(
        [
            sys.executable,
            "-m",
            "spacy",
            "project",
            "run",
            "all",
            ".",
            *(item for name, value in settings.items() for item in (f"--vars.{name}", str(value))),
        ],
        cwd=project_dir,
    )


def copy_project(project_dir: Path) -> Path:
    """The project's files, without benchmark runs or caches, in PROJECT_DIR."""
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, project_dir / name, ignore=shutil.ignore_patterns("runs", "__pycache__"))
        else:
            shutil.copy(source, project_dir / name)
    return project_dir


@pytest.fixture(scope="session")
def project(tmp_path_factory, tiny_transformer, conll_dir) -> Path:
    """A copy of the project after `spacy project run all` on the tiny model and sample data."""
    project_dir = copy_project(tmp_path_factory.mktemp("project"))
    project_run_all(project_dir, tiny_transformer, conll_dir)
    return project_dir


@pytest.fixture(scope="session")
def nlp(project):
    """The release pipeline (with entity confidences), loaded in this process."""
    import spacy

    import_model_code()

    return spacy.load(project / "training" / "model-release")


@pytest.fixture(scope="session")
def installed_model(project, tmp_path_factory):
    """The wheel installed into its own directory, outside the repo and the project."""
    wheels = list((project / "packages").glob("en_conll_distilbert-0.0.1/dist/*.whl"))
    assert len(wheels) == 1
    site = tmp_path_factory.mktemp("site")
    run_checked(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheels[0])],
        cwd=site,
    )
    return site


def run_in_clean_process(site: Path, code: str, *args: str) -> dict:
    """Run CODE (with ARGS as sys.argv[1:]) with only the installed package on the path; it prints
    one JSON line last."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    stdout = run_checked([sys.executable, "-c", code, *args], cwd=site.parent, env=env).stdout
    return json.loads(stdout.strip().splitlines()[-1])


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("Chromium is needed for the rendering test: apt-get install chromium (.ci/run does)")


def rendered_dom(html: Path, tmp_path: Path) -> str:
    result = subprocess.run(
        [
            find_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chrome'}",
            "--dump-dom",
            html.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
