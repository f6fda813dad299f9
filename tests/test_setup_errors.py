"""A GPU that cannot be used, or a hub source that cannot be reached, stops a step before any
heavy work with one line that names the cause and the fix, and no traceback."""

import importlib.util
import os
import subprocess
import sys
import types

import pytest
import torch
from conftest import CODE, ROOT

from scripts import project_util
from scripts.project_util import SetupError, gpu_problem, use_device

CONFIG = str(ROOT / "configs" / "ner_transformer.cfg")


def run_script(args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)


def assert_one_line_error(result, *expected):
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def cupy_installed(monkeypatch):
    """Pretend that CuPy is installed, whatever this machine has."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: types.SimpleNamespace() if name == "cupy" else find_spec(name, *args),
    )


@pytest.fixture
def cuda_torch(monkeypatch, cupy_installed):
    """Pretend that torch is a CUDA 13.0 build."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def test_cupy_missing(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "cupy" else find_spec(name, *args)
    )
    assert gpu_problem(0) == "CuPy is not installed (spaCy runs on a GPU through CuPy)"


def test_torch_without_cuda(monkeypatch, cupy_installed):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert gpu_problem(0) == f"torch {torch.__version__} is a CPU build, without CUDA"


def test_no_device(monkeypatch, cuda_torch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_problem(0) == "no CUDA device is visible (CUDA_VISIBLE_DEVICES='')"


def test_device_id_out_of_range(monkeypatch, cuda_torch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert gpu_problem(2) == "GPU id 2 is out of range: 2 CUDA device(s) visible, ids 0 to 1"


def test_cupy_that_cannot_load_its_cuda_libraries(monkeypatch, cuda_torch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def device(gpu_id):
        raise RuntimeError("CuPy failed to load libnvrtc.so.12: cannot open shared object file\nmore detail")

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(Device=device)))
    assert gpu_problem(0) == (
        "CuPy cannot run on GPU 0 (CuPy failed to load libnvrtc.so.12: cannot open shared "
        "object file); its wheel must match torch's CUDA 13.0"
    )


def test_use_device_names_the_fix_and_keeps_the_cpu_path(monkeypatch):
    monkeypatch.setattr(project_util, "gpu_problem", lambda gpu_id: "no CUDA device is visible")
    use_device(-1)  # the CPU: nothing is checked, nothing changes
    with pytest.raises(SetupError) as err:
        use_device(0)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("Cannot use GPU 0: no CUDA device is visible.")
    assert "pip install -r requirements-gpu.txt" in message and "--vars.gpu_id -1" in message


@pytest.mark.skipif(gpu_problem(0) is None, reason="this machine has a usable GPU")
@pytest.mark.parametrize("script", ["train", "evaluate", "predict", "benchmark_speed"])
def test_every_step_that_takes_gpu_id_stops_in_one_line(script, tmp_path):
    data = tmp_path / "test.spacy"
    data.write_bytes(b"")
    args = {
        "train": ["-m", "scripts.train", CONFIG, "--output", str(tmp_path / "out"), "--code", CODE],
        "evaluate": ["-m", "scripts.evaluate", "no-such-model", str(data), "--output", str(tmp_path / "t.json")],
        "predict": ["-m", "annotate.predict", "--text", "Bill Gates", "--model", "no-such-model"],
        "benchmark_speed": [
            "-m",
            "benchmarks.benchmark_speed",
            "no-such-model",
            str(data),
            "no-such-backbone",
            "--output",
            str(tmp_path / "s.json"),
        ],
    }[script]
    result = run_script([*args, "--gpu-id", "0"])
    assert_one_line_error(result, f"Cannot use GPU 0: {gpu_problem(0)}", "requirements-gpu.txt", "--vars.gpu_id -1")
    assert not (tmp_path / "out").exists()


def offline_env(tmp_path):
    # An empty cache too: with a cached copy the hub would not be needed.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}


def test_convert_with_the_hub_offline(tmp_path):
    output = tmp_path / "corpus"
    result = run_script(["-m", "scripts.convert", str(output)], env=offline_env(tmp_path))
    assert_one_line_error(
        result,
        "Cannot load the dataset eriktks/conll2003@refs/convert/parquet",
        "the Hugging Face hub cannot be reached",
        "--vars.conll_dir",
    )
    assert not output.exists()


@pytest.mark.parametrize("transformer", ["distilbert-base-cased", "no-such-dir/model"])
def test_train_with_a_transformer_that_cannot_be_downloaded(transformer, tmp_path):
    output = tmp_path / "training"
    result = run_script(
        ["-m", "scripts.train", CONFIG, "--output", str(output), "--code", CODE, "--transformer", transformer],
        env=offline_env(tmp_path),
    )
    assert_one_line_error(
        result,
        f"Cannot load the transformer {transformer!r}",
        "no such local directory",
        "the Hugging Face hub cannot be reached",
        "--vars.transformer",
    )
    assert not output.exists()


def test_train_with_a_directory_that_is_not_a_model(tmp_path):
    not_a_model = tmp_path / "weights"
    not_a_model.mkdir()
    result = run_script(
        [
            "-m",
            "scripts.train",
            CONFIG,
            "--output",
            str(tmp_path / "training"),
            "--code",
            CODE,
            "--transformer",
            str(not_a_model),
        ]
    )
    assert_one_line_error(result, f"Transformer directory {not_a_model} holds no config.json", "--vars.transformer")
