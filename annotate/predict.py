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
import json
import multiprocessing
import os
import sys
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Deque, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import spacy
import typer
from spacy import displacy
from spacy.language import Language
from spacy.util import minibatch
from tqdm import tqdm

# The shared helpers (scripts/) and the packaged code (model_code/), for this script run as a file.
sys.path[:0] = [str(Path(__file__).resolve().parents[1] / folder) for folder in ("scripts", "model_code")]
from annotation import CPU_BATCH, GPU_BATCH, AnnotationFailure, Entities, annotate_texts, parse_jsonl_line
from project_util import atomic_output, atomic_write_text, import_code_paths, one_line_errors, use_device

app = typer.Typer(add_completion=False)


class Record(NamedTuple):
    text: str
    meta: Dict[str, Any]
    location: str  # source and line, for the error messages


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


def read_jsonl(lines: Iterable[bytes], source: str, errors: InputErrors) -> Iterator[Record]:
    for line_no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        parsed, problem = parse_jsonl_line(raw)
        if parsed:
            yield Record(parsed[0], parsed[1], f"{source}:{line_no}")
        elif errors.report(f"{source}:{line_no}: {problem}"):
            return


def read_text_files(sources: Iterable[Tuple[str, BinaryIO]], errors: InputErrors) -> Iterator[Record]:
    """One record per (name, binary file) pair: the whole file is one document."""
    for name, stream in sources:
        try:
            yield Record(stream.read().decode("utf-8"), {"source": name}, name)
        except UnicodeDecodeError as err:
            if errors.report(f"{name}: not valid UTF-8 at byte {err.start}"):
                return


def open_files(paths: Iterable[Path]) -> Iterator[Tuple[str, BinaryIO]]:
    for path in paths:
        with path.open("rb") as stream:
            yield str(path), stream


def read_jsonl_file(path: Path, errors: InputErrors) -> Iterator[Record]:
    with path.open("rb") as lines:
        yield from read_jsonl(lines, str(path), errors)


def read_records(source: str, input_format: str, errors: InputErrors,
                 stdin: BinaryIO) -> Tuple[Iterator[Record], Optional[int]]:
    """The records to annotate and, where cheap to know, how many there are (for the progress bar)."""
    if source == "-":
        if input_format == "text":
            return read_text_files([("<stdin>", stdin)], errors), None
        return read_jsonl(stdin, "<stdin>", errors), None
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        return read_text_files(open_files(files), errors), len(files)
    if not path.is_file():
        raise SourceNotFound(f"{path}: no such file or directory")
    if input_format == "jsonl" or (input_format == "auto" and path.suffix == ".jsonl"):
        with path.open("rb") as f:
            total = sum(1 for line in f if line.strip())
        return read_jsonl_file(path, errors), total
    return read_text_files(open_files([path]), errors), 1


def kept_entities(entities: Entities, min_score: float) -> Entities:
    return [e for e in entities if e["score"] is None or e["score"] >= min_score]


worker_nlp: Optional[Language] = None


def load_worker(model: str, code_paths: str, threads: int) -> None:
    global worker_nlp
    import torch

    torch.set_num_threads(threads)
    import_code_paths(code_paths)
    worker_nlp = spacy.load(model)


def annotate_in_worker(texts: Sequence[str], batch_size: int) -> list:
    return annotate_texts(worker_nlp, texts, batch_size)


def annotated_batches(records: Iterator[Record], model: str, code_paths: str, batch_size: int,
                      n_process: int) -> Iterator[Tuple[List[Record], list]]:
    """Batches of records with their entities (or failures), in the input order. With n_process > 1
    the batches go to worker processes that each load the model once."""
    batches = (list(batch) for batch in minibatch(records, size=batch_size))
    if n_process == 1:
        nlp = spacy.load(model)
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


@app.command()
def main(
    source: Optional[str] = typer.Argument(None, help="Text file, directory of *.txt, JSONL file, or - for stdin"),
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Annotate this string instead of SOURCE"),
    model: str = typer.Option("en_conll_distilbert", "--model", "-m", help="Installed package or pipeline dir"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSONL output file (default: stdout)"),
    input_format: str = typer.Option("auto", "--format", help="auto, text or jsonl (auto: .jsonl files are JSONL)"),
    min_score: float = typer.Option(0.0, "--min-score", help="Drop entities whose confidence is below this"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1,
                                             help=f"Documents per nlp.pipe batch (default: {CPU_BATCH} on the CPU, "
                                                  f"{GPU_BATCH} on a GPU, which the transformer fills better)"),
    n_process: int = typer.Option(1, "--n-process", "-n", help="Worker processes (CPU only)"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for the CPU"),
    on_error: str = typer.Option("stop", "--on-error", help="A record that cannot be read or annotated: stop, or skip it"),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a displaCy page of the annotated documents"),
    html_limit: int = typer.Option(100, "--html-limit", help="At most this many documents on the displaCy page"),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files to import first"),
    include_text: bool = typer.Option(False, "--include-text", help="Copy the input text into each output line"),
):
    """Find PER, ORG, LOC and MISC entities; write JSONL, one line per input record."""
    if on_error not in ("stop", "skip"):
        raise typer.BadParameter("--on-error must be stop or skip")
    if input_format not in ("auto", "text", "jsonl"):
        raise typer.BadParameter("--format must be auto, text or jsonl")
    if (text is None) == (source is None):
        raise typer.BadParameter("give either SOURCE or --text")
    if gpu_id >= 0 and n_process > 1:
        raise typer.BadParameter("--n-process > 1 runs on the CPU only; use --gpu-id -1")
    batch_size = batch_size or (GPU_BATCH if gpu_id >= 0 else CPU_BATCH)
    import_code_paths(code_paths)
    with one_line_errors():
        use_device(gpu_id)
    errors = InputErrors(stop_on_error=on_error == "stop", messages=[])
    try:
        records, total = (([Record(text, {}, "--text")], 1) if text is not None
                          else read_records(source, input_format, errors, sys.stdin.buffer))
    except SourceNotFound as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1)
    html_docs: List[Dict[str, Any]] = []
    written = 0
    # A file output is written to a temporary file and renamed at the end: a crash leaves an
    # earlier output as it was, and a stop on a bad record keeps the records done before it.
    with atomic_output(output) if output else nullcontext(sys.stdout) as out, \
            tqdm(total=total, disable=source in (None, "-"), unit="doc", file=sys.stderr) as progress:
        for batch, results in annotated_batches(iter(records), model, code_paths, batch_size, n_process):
            stop = False
            for record, entities in zip(batch, results):
                progress.update(1)
                if isinstance(entities, AnnotationFailure):
                    stop = errors.report(f"{record.location}: cannot annotate ({entities})")
                    if stop:
                        break
                    continue
                line = {**record.meta, **({"text": record.text} if include_text else {}),
                        "entities": kept_entities(entities, min_score)}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                written += 1
                if html and len(html_docs) < html_limit:
                    html_docs.append({"text": record.text, "ents": [
                        {"start": e["start"], "end": e["end"], "label": e["entity_group"]} for e in entities]})
            if stop:
                break
    if html:
        atomic_write_text(html, displacy.render(html_docs, style="ent", page=True, manual=True))
    typer.echo(f"Annotated {written} document(s)" + (f" into {output}" if output else ""), err=True)
    if errors.messages and errors.stop_on_error:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
