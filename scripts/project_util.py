"""Helpers that the workflow's scripts share. Not bundled into the model package."""

import importlib.util
import io
import json
import os
import signal
import tempfile
import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Union

import catalogue
import spacy
import typer
from spacy.cli._util import import_code

if TYPE_CHECKING:
    import pyarrow.fs

GPU_INSTALL = "pip install -r requirements-gpu.txt"


class Switch(str, Enum):
    """true, false, or auto: on where the hardware does it natively (cpu_bf16)."""

    true = "true"
    false = "false"
    auto = "auto"


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: without them torch emulates bf16, far slower than fp32."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.exists() else []
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_switch(value: Optional[Switch]) -> Optional[bool]:
    """None stays None (keep the config's value); auto means: does this CPU do bf16 natively?"""
    return None if value is None else cpu_has_native_bf16() if value == Switch.auto else value == Switch.true


def iob2_tags(labels: Iterable[str]) -> List[str]:
    """A token-classification head's tags for these entity types: O, then B- and I- of each."""
    return ["O", *(f"{prefix}-{label}" for label in labels for prefix in "BI")]


class SetupError(RuntimeError):
    """A device or a source that cannot be used; the message is one line: the cause and the fix."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Stop the script with the SetupError's one line, without a traceback."""
    try:
        yield
    except SetupError as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1)


def import_code_paths(code_paths: str) -> None:
    """Import each of the comma-separated Python files, so that their registered functions exist."""
    for code_path in filter(None, code_paths.split(",")):
        import_code(code_path)


def current_umask() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it; it is put back at once
    os.umask(umask)
    return umask


def first_line(err: BaseException) -> str:
    """The error's first line, or its class name where it has no message."""
    message = str(err).strip()
    return message.splitlines()[0] if message else type(err).__name__


@contextmanager
def atomic_output(
    path: Union[Path, str], mode: str = "w", filesystem: Optional["pyarrow.fs.FileSystem"] = None
) -> Iterator[IO]:
    """A temporary file beside PATH that replaces PATH when the block ends without an error:
    PATH is never half-written, an earlier PATH survives a failure, and the temporary file is
    removed on any failure. PATH is local, or a path on FILESYSTEM (pyarrow.fs: S3, GCS, HDFS...)."""
    if filesystem is not None:
        with atomic_filesystem_output(filesystem, str(path), mode) as output:
            yield output
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600 whatever the umask; give it the mode open(path, "w") would.
        os.chmod(tmp_name, 0o666 & ~current_umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as tmp_file:
            yield tmp_file
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_filesystem_output(filesystem: "pyarrow.fs.FileSystem", path: str, mode: str) -> Iterator[IO]:
    tmp_path = f"{path}.tmp-{os.getpid()}-{time.time_ns()}"
    try:
        with filesystem.open_output_stream(tmp_path) as stream:
            yield stream if "b" in mode else io.TextIOWrapper(stream, encoding="utf-8", write_through=True)
        filesystem.move(tmp_path, path)
    except BaseException:
        import pyarrow.fs

        if filesystem.get_file_info(tmp_path).type != pyarrow.fs.FileType.NotFound:
            filesystem.delete_file(tmp_path)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_output(path) as output:
        output.write(text)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def replace_between_markers(path: Path, start: str, end: str, content: str) -> None:
    """Rewrite the part of a Markdown file between two marker lines (generated tables)."""
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise typer.BadParameter(f"{path} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(path, f"{head}{start}\n{content}\n{end}{tail}")


def gpu_problem(gpu_id: int) -> Optional[str]:
    """Why GPU `gpu_id` cannot run spaCy (whose GPU ops go through CuPy, the transformer's
    through torch), or None when it can."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (spaCy runs on a GPU through CuPy)"
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build, without CUDA"
    count = torch.cuda.device_count()
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return "no CUDA device is visible" + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
    if gpu_id >= count:
        return f"GPU id {gpu_id} is out of range: {count} CUDA device(s) visible, ids 0 to {count - 1}"
    try:
        import cupy

        with cupy.cuda.Device(gpu_id):
            # An elementwise kernel: CuPy compiles it, so this also proves that its CUDA libraries load.
            (cupy.arange(4, dtype="float32") * 2).sum().item()
    except Exception as err:  # CuPy raises a different class for each missing library or driver.
        cause = first_line(err)
        return f"CuPy cannot run on GPU {gpu_id} ({cause}); its wheel must match torch's CUDA {torch.version.cuda}"
    return None


def check_device(gpu_id: int) -> None:
    """Stop with one line that names the cause and the fix when GPU `gpu_id` (>= 0) cannot be used."""
    problem = gpu_problem(gpu_id)
    if problem:
        raise SetupError(
            f"Cannot use GPU {gpu_id}: {problem}. Fix: install the GPU requirements ({GPU_INSTALL}), "
            "or run on the CPU with --vars.gpu_id -1 (--gpu-id -1 for a script)."
        )


def use_device(gpu_id: int) -> None:
    """Run spaCy on GPU `gpu_id`, or on the CPU for -1. Checked before any heavy work, so an
    unusable GPU stops a step with one line that names the cause and the fix."""
    if gpu_id >= 0:
        check_device(gpu_id)
        spacy.require_gpu(gpu_id)


def check_transformer(name: str) -> None:
    """Stop early when the backbone is neither a local save_pretrained directory nor downloadable."""
    fix = "Point --vars.transformer (--transformer for a script) at a local save_pretrained directory."
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SetupError(
                f"Transformer directory {path} holds no config.json, so save_pretrained did not write it. {fix}"
            )
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except OSError as err:
        # transformers says "couldn't connect" both offline (HF_HUB_OFFLINE=1) and when the hub is unreachable.
        cause = (
            "the Hugging Face hub cannot be reached and no copy is cached" if "connect" in str(err) else first_line(err)
        )
        raise SetupError(f"Cannot load the transformer {name!r}: no such local directory, and {cause}. {fix}") from err


MODEL_CODE = Path(__file__).resolve().parents[1] / "model_code"


def load_pipeline(model: str, **kwargs: Any) -> "spacy.Language":
    """spacy.load(MODEL, **KWARGS), with one-line errors. A pipeline directory this project trained names
    functions registered by its packaged code (model_code/; the installed package brings its own):
    when they are missing, that code is imported, as --code would, and the load tried again."""
    try:
        return spacy.load(model, **kwargs)
    except OSError as err:
        if "E050" not in str(err):
            raise
        raise SetupError(
            f"--model {model}: no installed package or pipeline directory of that name. Fix: install "
            "the model's wheel, or give the path of a pipeline directory (training/model-release)."
        )
    except catalogue.RegistryError:
        import_code_paths(",".join(str(path) for path in sorted(MODEL_CODE.glob("*.py"))))
    try:
        return spacy.load(model, **kwargs)
    except catalogue.RegistryError as err:
        missing = str(err).split(". ")[0]
        raise SetupError(f"--model {model}: {missing}. Fix: pass the Python files that register it with --code.")


def check_output_path(path: Path, option: str) -> None:
    """Stop with one line, before any work, when PATH cannot be written as a file: it is a directory,
    a file stands where a directory above it should be, or nothing can be created in the nearest
    existing directory above it (a test file is created there and removed; no directory is made)."""
    if path.is_dir():
        raise SetupError(f"{option} {path}: is a directory. Fix: give the path of a file.")
    nearest = next(parent for parent in path.absolute().parents if parent.exists())
    try:
        if not nearest.is_dir():
            raise NotADirectoryError(20, f"{nearest} is a file")
        fd, probe = tempfile.mkstemp(dir=nearest, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SetupError(
            f"{option} {path}: cannot write there ({err.strerror or err}). Fix: choose a writable directory."
        ) from err


def check_not_an_input(output: Path, inputs: Dict[str, Optional[Path]]) -> None:
    """Stop when OUTPUT is one of INPUTS ({option: path}) after links are resolved: writing it would
    destroy the input."""
    for option, path in inputs.items():
        if path is not None and output.resolve() == path.resolve():
            raise SetupError(
                f"{option} {path} is also the output: writing it would replace the input. Fix: give "
                "another output path."
            )


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (kill, a scheduler's stop) handled as Ctrl-C, so that temporary outputs are removed
    and the run says how far it got, as on KeyboardInterrupt."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
