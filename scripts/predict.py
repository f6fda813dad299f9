"""Annotate text with the NER pipeline and write one JSON line per input record.

Input: a string (--text), a text file (one document), a directory (each *.txt file is one
document), or JSONL with a `text` field; `-` reads stdin. Each output line holds the input's
other fields (or `source` for files) and `entities`, each entity with the fields of the
Hugging Face token-classification pipeline: `entity_group`, `score`, `word`, and `start`/`end`
as character offsets into the input text, so `text[start:end] == word`.
"""
import json
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import spacy
import typer
from spacy import displacy
from spacy.tokens import Doc, Span
from tqdm import tqdm

from project_util import atomic_output, atomic_write_text, import_code_paths

app = typer.Typer(add_completion=False)
Record = Tuple[str, Dict[str, Any]]


class SourceNotFound(ValueError):
    pass


@dataclass
class InputErrors:
    """Malformed JSONL lines or unreadable files seen so far; with stop_on_error the reading
    stops at the first."""

    stop_on_error: bool
    messages: List[str]

    def report(self, message: str) -> bool:
        self.messages.append(message)
        typer.echo(f"{'Error' if self.stop_on_error else 'Skipped'}: {message}", err=True)
        return self.stop_on_error


def read_jsonl(lines: Iterable[str], source: str, errors: InputErrors) -> Iterator[Record]:
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problem = f"{source}:{line_no}: not valid JSON ({err.msg})"
        else:
            if not isinstance(record, dict):
                problem = f"{source}:{line_no}: expected a JSON object, got {type(record).__name__}"
            elif not isinstance(record.get("text"), str):
                problem = f"{source}:{line_no}: no string field 'text'"
            else:
                text = record.pop("text")
                yield text, record
                continue
        if errors.report(problem):
            return


def read_text_files(paths: Iterable[Path], errors: InputErrors) -> Iterator[Record]:
    for path in paths:
        try:
            yield path.read_text(encoding="utf-8"), {"source": str(path)}
        except UnicodeDecodeError as err:
            if errors.report(f"{path}: not valid UTF-8 at byte {err.start}"):
                return


def read_jsonl_file(path: Path, errors: InputErrors) -> Iterator[Record]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        yield from read_jsonl(lines, str(path), errors)


def read_records(source: str, input_format: str, errors: InputErrors) -> Tuple[Iterator[Record], Optional[int]]:
    """The records to annotate and, where cheap to know, how many there are (for the progress bar)."""
    if source == "-":
        if input_format == "text":
            return iter([(sys.stdin.read(), {"source": "<stdin>"})]), None
        return read_jsonl(sys.stdin, "<stdin>", errors), None
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        return read_text_files(files, errors), len(files)
    if not path.is_file():
        raise SourceNotFound(f"{path}: no such file or directory")
    if input_format == "jsonl" or (input_format == "auto" and path.suffix == ".jsonl"):
        with path.open(encoding="utf-8", errors="replace") as f:
            total = sum(1 for line in f if line.strip())
        return read_jsonl_file(path, errors), total
    return read_text_files([path], errors), 1


def doc_entities(doc: Doc, min_score: float) -> List[Dict[str, Any]]:
    entities = []
    for ent in doc.ents:
        confidence = ent._.confidence if Span.has_extension("confidence") else None
        score = None if confidence is None else round(float(confidence), 4)
        if score is not None and score < min_score:
            continue
        entities.append({
            "entity_group": ent.label_,
            "score": score,
            "word": ent.text,
            "start": ent.start_char,
            "end": ent.end_char,
        })
    return entities


@app.command()
def main(
    source: Optional[str] = typer.Argument(None, help="Text file, directory of *.txt, JSONL file, or - for stdin"),
    text: Optional[str] = typer.Option(None, "--text", "-t", help="Annotate this string instead of SOURCE"),
    model: str = typer.Option("en_conll_distilbert", "--model", "-m", help="Installed package or pipeline dir"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSONL output file (default: stdout)"),
    input_format: str = typer.Option("auto", "--format", help="auto, text or jsonl (auto: .jsonl files are JSONL)"),
    min_score: float = typer.Option(0.0, "--min-score", help="Drop entities whose confidence is below this"),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Documents per nlp.pipe batch"),
    n_process: int = typer.Option(1, "--n-process", "-n", help="Worker processes (CPU only)"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for the CPU"),
    on_error: str = typer.Option("stop", "--on-error", help="Malformed JSONL lines: stop, or skip and go on"),
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
    import_code_paths(code_paths)
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    errors = InputErrors(stop_on_error=on_error == "stop", messages=[])
    try:
        records, total = ([(text, {})], 1) if text is not None else read_records(source, input_format, errors)
    except SourceNotFound as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(1)
    nlp = spacy.load(model)
    html_docs: List[Dict[str, Any]] = []
    written = 0
    # A file output is written to a temporary file and renamed at the end: a crash leaves an
    # earlier output as it was, and a stop on a malformed line keeps the records done before it.
    with atomic_output(output) if output else nullcontext(sys.stdout) as out:
        annotated = nlp.pipe(records, as_tuples=True, batch_size=batch_size, n_process=n_process)
        show_progress = source not in (None, "-")
        for doc, meta in tqdm(annotated, total=total, disable=not show_progress, unit="doc", file=sys.stderr):
            line = {**meta, **({"text": doc.text} if include_text else {}), "entities": doc_entities(doc, min_score)}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            written += 1
            if html and len(html_docs) < html_limit:
                # Text and entities only: the Doc itself holds the transformer output.
                html_docs.append({"text": doc.text, "ents": [
                    {"start": e.start_char, "end": e.end_char, "label": e.label_} for e in doc.ents]})
    if html:
        atomic_write_text(html, displacy.render(html_docs, style="ent", page=True, manual=True))
    typer.echo(f"Annotated {written} document(s)" + (f" into {output}" if output else ""), err=True)
    if errors.messages and errors.stop_on_error:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
