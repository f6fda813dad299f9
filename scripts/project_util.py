"""Helpers that the workflow's scripts share. Not bundled into the model package."""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from spacy.cli._util import import_code


def import_code_paths(code_paths: str) -> None:
    """Import each of the comma-separated Python files, so that their registered functions exist."""
    for code_path in filter(None, code_paths.split(",")):
        import_code(code_path)


@contextmanager
def atomic_output(path: Path, mode: str = "w") -> Iterator[IO]:
    """A temporary file beside PATH that replaces PATH when the block ends without an error:
    PATH is never half-written, and an earlier PATH survives a failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as tmp_file:
            yield tmp_file
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_output(path) as output:
        output.write(text)
