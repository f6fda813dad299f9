"""Annotate text with the NER pipeline and write one JSON line per input record.

Input: a string (--text), a text file (one document), a directory (each *.txt file is one
document), or JSONL with a `text` field; `-` reads stdin. Each output line holds the input's
other fields (or `source` for files) and `entities`, each entity with the fields of the
Hugging Face token-classification pipeline: `entity_group`, `score`, `word`, and `start`/`end`
as character offsets into the input text, so `text[start:end] == word`. Texts of any length are
annotated whole (long_texts.py). A record that cannot be read (bad JSON, no `text`, invalid UTF-8)
or cannot be annotated is reported with its source and line; --on-error says whether to stop there
(keeping the records before it) or to skip it and go on.
"""

import math
import multiprocessing
import os
import sys
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import typer
from spacy import displacy
from spacy.language import Language
from spacy.util import minibatch
from tqdm import tqdm

from annotate.annotation import (
    CPU_BATCH,
    GPU_BATCH,
    AnnotationFailure,
    BadRecord,
    Entities,
    Record,
    annotate_texts,
    json_line,
    kept_entities,
    read_jsonl,
    readable_records,
)
from scripts.project_util import (
    SetupError,
    atomic_output,
    atomic_write_text,
    check_not_an_input,
    check_output_path,
    import_code_paths,
    load_pipeline,
    one_line_errors,
    terminate_as_interrupt,
    use_device,
)

app = typer.Typer(add_completion=False)
Readings = Iterator[Union[Record, BadRecord]]
JSONL_SUFFIXES, TEXT_SUFFIXES = (".jsonl", ".ndjson"), (".txt",)


class SourceNotFound(ValueError):
    pass


@dataclass
class InputErrors:
    """Records that could not be read or annotated, seen so far; with stop_on_error the run
    stops at the first."""

    stop_on_error: bool
    messages: List[str]

    def report(self, message: str) -> bool:
        self.messages.append(message)
        typer.echo(f"{'Error' if self.stop_on_error else 'Skipped'}: {message}", err=True)
        return self.stop_on_error


def text_record(name: str, stream: BinaryIO) -> Union[Record, BadRecord]:
    """The whole file is one document (a UTF-8 byte-order mark at its start is not part of it)."""
    try:
        return Record(stream.read().decode("utf-8-sig"), {"source": name}, name, {})
    except UnicodeDecodeError as err:
        return BadRecord(name, {}, f"not valid UTF-8 at byte {err.start}")
    except OSError as err:
        return BadRecord(name, {}, f"cannot read ({err.strerror or err})")


def read_text_files(paths: Iterable[Path]) -> Readings:
    for path in paths:
        try:
            stream = path.open("rb")
        except OSError as err:
            yield BadRecord(str(path), {}, f"cannot read ({err.strerror or err})")
            continue
        with stream:
            yield text_record(str(path), stream)


def read_jsonl_file(path: Path) -> Readings:
    with path.open("rb") as lines:
        yield from read_jsonl(lines, str(path))


def read_records(source: str, input_format: str, stdin: BinaryIO) -> Tuple[Readings, Optional[int]]:
    """The records to annotate and, where cheap to know, how many there are (for the progress bar)."""
    if source == "-":
        return (iter([text_record("<stdin>", stdin)]) if input_format == "text" else read_jsonl(stdin, "<stdin>")), None
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
        return read_text_files(files), len(files)
    if not path.is_file():
        raise SourceNotFound(f"{path}: no such file or directory")
    if input_format == "jsonl" or (input_format == "auto" and path.suffix.lower() in JSONL_SUFFIXES):
        with path.open("rb") as f:
            total = sum(1 for line in f if line.strip())
        return read_jsonl_file(path), total
    return read_text_files([path]), 1


worker_nlp: Optional[Language] = None


def load_worker(model: str, code_paths: str, threads: int) -> None:
    global worker_nlp
    import torch

    torch.set_num_threads(threads)
    import_code_paths(code_paths)
    worker_nlp = load_pipeline(model)


def annotate_in_worker(texts: Sequence[str], batch_size: int) -> list:
    return annotate_texts(worker_nlp, texts, batch_size)


def annotated_batches(
    records: Iterator[Record], nlp: Language, model: str, code_paths: str, batch_size: int, n_process: int
) -> Iterator[Tuple[List[Record], list]]:
    """Batches of records with their entities (or failures), in the input order: by NLP, or with
    n_process > 1 by worker processes that each load MODEL once."""
    batches = (list(batch) for batch in minibatch(records, size=batch_size))
    if n_process == 1:
        for batch in batches:
            yield batch, annotate_texts(nlp, [r.text for r in batch], batch_size)
        return
    threads = max(1, (os.cpu_count() or 1) // n_process)
    context = multiprocessing.get_context("spawn")
    with context.Pool(n_process, initializer=load_worker, initargs=(model, code_paths, threads)) as pool:
        # At most two batches per worker in flight, so the input is read as fast as it is annotated.
        pending: Deque[Tuple[List[Record], Any]] = deque()
        for batch in batches:
            pending.append((batch, pool.apply_async(annotate_in_worker, ([r.text for r in batch], batch_size))))
            if len(pending) > 2 * n_process:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


def check_options(
    source: Optional[str],
    text: Optional[str],
    input_format: str,
    on_error: str,
    gpu_id: int,
    n_process: int,
    min_score: float,
) -> None:
    if on_error not in ("stop", "skip"):
        raise typer.BadParameter("--on-error must be stop or skip")
    if input_format not in ("auto", "text", "jsonl"):
        raise typer.BadParameter("--format must be auto, text or jsonl")
    if (text is None) == (source is None):
        raise typer.BadParameter("give either SOURCE or --text")
    if gpu_id >= 0 and n_process > 1:
        raise typer.BadParameter("--n-process > 1 runs on the CPU only; use --gpu-id -1")
    if math.isnan(min_score):
        raise typer.BadParameter("--min-score must be a number from 0 to 1")


def check_outputs_and_load(
    source: Optional[str], output: Optional[Path], html: Optional[Path], model: str, gpu_id: int, min_score: float
) -> Language:
    """Every output checked, and the model loaded, before the first record."""
    inputs = {"SOURCE": Path(source) if source not in (None, "-") else None}
    for option, path in (("--output", output), ("--html", html)):
        if path:
            check_not_an_input(path, inputs)
            check_output_path(path, option)
    if output and html:
        check_not_an_input(html, {"--output": output})
    use_device(gpu_id)
    nlp = load_pipeline(model)
    if min_score > 0 and "entity_confidence" not in nlp.pipe_names:
        raise SetupError(
            f"--min-score {min_score}: the model {model} has no entity_confidence component, so its "
            "entities have no score to compare. Fix: use the release pipeline, or leave --min-score out."
        )
    return nlp


@dataclass
class RecordWriter:
    """Writes each annotated record as a JSON line (and the first HTML_LIMIT into HTML_DOCS), reports
    the records that could not be annotated, and counts the records written so far (for a stop)."""

    errors: InputErrors
    min_score: float
    include_text: bool
    html_docs: Optional[List[Dict[str, Any]]]
    html_limit: int
    written: int = 0
    warned_entities_field: bool = False

    def write(
        self, annotated: Iterator[Tuple[Record, Union[Entities, AnnotationFailure]]], out: IO, progress: tqdm
    ) -> None:
        for record, entities in annotated:
            progress.update(1)
            if isinstance(entities, AnnotationFailure):
                if self.errors.report(f"{record.location}: cannot annotate ({entities})"):
                    break
                continue
            if "entities" in record.fields and not self.warned_entities_field:
                typer.echo(
                    f"Warning: {record.location}: the input's own 'entities' field is replaced by the "
                    "annotation (the first such record; others are not reported).",
                    err=True,
                )
                self.warned_entities_field = True
            text = {"text": record.text} if self.include_text else {}
            out.write(json_line({**record.fields, **text, "entities": kept_entities(entities, self.min_score)}))
            self.written += 1
            if self.html_docs is not None and len(self.html_docs) < self.html_limit:
                ents = [{"start": e["start"], "end": e["end"], "label": e["entity_group"]} for e in entities]
                self.html_docs.append({"text": record.text, "ents": ents})


@app.command()
def main(
    source: Optional[str] = typer.Argument(None, help="Text file, directory of *.txt, JSONL file, or - for stdin"),
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Annotate this string instead of SOURCE"),
    model: str = typer.Option("en_conll_distilbert", "--model", "-m", help="Installed package or pipeline dir"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSONL output file (default: stdout)"),
    input_format: str = typer.Option("auto", "--format", help="auto, text or jsonl (auto: .jsonl files are JSONL)"),
    min_score: float = typer.Option(
        0.0, "--min-score", min=0.0, max=1.0, help="Drop entities whose confidence is below this (0 to 1)"
    ),
    batch_size: Optional[int] = typer.Option(
        None,
        "--batch-size",
        "-b",
        min=1,
        help=f"Documents per nlp.pipe batch (default: {CPU_BATCH} on the CPU, "
        f"{GPU_BATCH} on a GPU, which the transformer fills better)",
    ),
    n_process: int = typer.Option(1, "--n-process", "-n", min=1, help="Worker processes (CPU only)"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for the CPU"),
    on_error: str = typer.Option(
        "stop", "--on-error", help="A record that cannot be read or annotated: stop, or skip it"
    ),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a displaCy page of the annotated documents"),
    html_limit: int = typer.Option(100, "--html-limit", min=0, help="At most this many documents on the displaCy page"),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files to import first"),
    include_text: bool = typer.Option(False, "--include-text", help="Copy the input text into each output line"),
):
    """Find the model's entities; write JSONL, one line per input record."""
    check_options(source, text, input_format, on_error, gpu_id, n_process, min_score)
    batch_size = batch_size or (GPU_BATCH if gpu_id >= 0 else CPU_BATCH)
    import_code_paths(code_paths)
    with one_line_errors():
        nlp = check_outputs_and_load(source, output, html, model, gpu_id, min_score)
    errors = InputErrors(stop_on_error=on_error == "stop", messages=[])
    try:
        readings, total = (
            (iter([Record(text, {}, "--text", {})]), 1)
            if text is not None
            else read_records(source, input_format, sys.stdin.buffer)
        )
    except SourceNotFound as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1)
    batches = annotated_batches(
        readable_records(readings, lambda bad: errors.report(f"{bad.location}: {bad.problem}")),
        nlp,
        model,
        code_paths,
        batch_size,
        n_process,
    )
    writer = RecordWriter(errors, min_score, include_text, [] if html else None, html_limit)
    try:
        # A file output is written to a temporary file and renamed at the end: a crash or a stop leaves an
        # earlier output as it was, and a stop on a bad record keeps the records done before it.
        with (
            terminate_as_interrupt(),
            atomic_output(output) if output else nullcontext(sys.stdout) as out,
            tqdm(total=total, disable=source in (None, "-"), unit="doc", file=sys.stderr) as progress,
        ):
            writer.write((pair for batch, results in batches for pair in zip(batch, results)), out, progress)
    except KeyboardInterrupt:
        kept = f"; {output} is as it was before the run" if output else ""
        typer.echo(f"\nInterrupted after {writer.written} annotated record(s){kept}.", err=True)
        raise typer.Exit(130)
    if html:
        atomic_write_text(html, displacy.render(writer.html_docs, style="ent", page=True, manual=True))
    typer.echo(f"Annotated {writer.written} document(s)" + (f" into {output}" if output else ""), err=True)
    if errors.messages and errors.stop_on_error:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
