"""The recipe's options in project.yml (windows, stride, parameter averages) reach the config that
`spacy train` gets: the train command as `spacy project run` writes it, run up to spaCy's training."""

import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT
from spacy import util
from typer.testing import CliRunner


class TrainingCalled(Exception):
    pass


def test_window_stride_and_averages_reach_the_training_config(tmp_path, tiny_transformer, monkeypatch):
    from scripts import train

    dry_run = subprocess.run(
        [sys.executable, "-m", "spacy", "project", "run", "train", str(ROOT), "--dry"]
        + ["--vars.window", "160", "--vars.stride", "96", "--vars.use_averages", "true"]
        + ["--vars.gpu_id", "-1", "--vars.transformer", str(tiny_transformer)],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in dry_run.stdout.splitlines() if line.startswith("Running command:"))
    command = shlex.split(line.removeprefix("Running command:"))
    assert command[1:3] == ["-m", "scripts.train"]
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "corpus").mkdir()
    for split in ("train", "dev"):
        (tmp_path / "corpus" / f"{split}.spacy").touch()
    monkeypatch.chdir(tmp_path)
    called = {}

    def spacy_train(config_path, output_path, use_gpu, overrides):
        called["config"] = util.load_config(config_path, overrides=overrides, interpolate=True)
        raise TrainingCalled

    monkeypatch.setattr(train, "spacy_train", spacy_train)
    # The config is only read here; importing the --code files again would replace the registered
    # functions that the rest of the session's tests hold.
    monkeypatch.setattr(train, "import_code_paths", lambda code_paths: None)
    result = CliRunner().invoke(train.app, command[3:])
    assert isinstance(result.exception, TrainingCalled), (result.output, repr(result.exception))
    config = called["config"]
    assert config["components"]["transformer"]["model"]["get_spans"]["window"] == 160
    assert config["components"]["transformer"]["model"]["get_spans"]["stride"] == 96
    assert config["training"]["optimizer"]["use_averages"] is True


@pytest.mark.parametrize("variable", ["window", "stride", "use_averages"])
def test_the_defaults_are_the_configs(variable):
    """project.yml's defaults are the config's own values, so `spacy train` alone trains the same recipe."""
    from weasel.util import load_project_config

    variables = load_project_config(ROOT)["vars"]
    config = util.load_config(ROOT / "configs" / "ner_transformer.cfg")
    section = (
        config["training"]["optimizer"]
        if variable == "use_averages"
        else config["components"]["transformer"]["model"]["get_spans"]
    )
    assert section[variable] == variables[variable]
