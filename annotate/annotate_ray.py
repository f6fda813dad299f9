"""Annotate a corpus bigger than one machine on Ray Data: JSONL or Parquet files with a `text` column
in, one Parquet (or JSONL) file of entities out per input file.

Ray Data hands the input files to a pool of `--workers` actors, each of which loads the model once
(an installed package or a pipeline directory) and annotates its files with the code that
`predict` uses (annotation.py), batch by batch: the same entities, scores and offsets, texts beyond
`nlp.max_length` annotated whole. Each output row holds the input record's other columns plus
`entities` (`entity_group`, `score`, `word`, `start`, `end`).

Resumable and lossless: the output of an input file is named after it (its stem and a hash of its
full path) and written atomically (to a temporary name, then renamed), so a rerun skips the files
already done and redoes only the missing ones. A worker that dies is restarted by Ray and its file
retried; a file's output appears once, whole, with every record exactly once. Malformed records
(invalid JSON or UTF-8, no string `text`) and records that cannot be annotated go to
`<output>.malformed.jsonl` beside it, with their source file and line (JSONL) or row (Parquet).

Local paths, and anything `pyarrow.fs` opens (`s3://`, `gs://`, `hdfs://`), work alike. Without
`--address` a local Ray starts; with it the run joins that cluster, whose nodes must all reach the
input, the output and the model (an installed package on every node, or a path on shared storage).
"""

import fnmatch
import hashlib
import json
import re
import time
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy
import pyarrow
import pyarrow.fs
import pyarrow.parquet
import typer
from spacy.util import minibatch

from annotate.annotation import (
    CPU_BATCH,
    GPU_BATCH,
    AnnotationFailure,
    BadRecord,
    Record,
    annotate_texts,
    json_line,
    lone_surrogate,
    read_jsonl,
    readable_records,
)
from scripts.project_util import SetupError, atomic_output, check_device, import_code_paths, one_line_errors, use_device

app = typer.Typer(add_completion=False)
INPUT_SUFFIXES = (".jsonl", ".parquet")
PROJECT_DIR = Path(__file__).resolve().parents[1]
ENTITY_TYPE = pyarrow.list_(
    pyarrow.struct(
        [
            ("entity_group", pyarrow.string()),
            ("score", pyarrow.float64()),
            ("word", pyarrow.string()),
            ("start", pyarrow.int64()),
            ("end", pyarrow.int64()),
        ]
    )
)


def resolve(uri: str) -> Tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem and path of a URI or local path (made absolute, so that Ray workers find it)."""
    if "://" in uri:
        return pyarrow.fs.FileSystem.from_uri(uri)
    return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())


def list_inputs(fs: pyarrow.fs.FileSystem, path: str) -> List[str]:
    """A file, every JSONL/Parquet file under a directory, or the files that match a glob."""
    info = fs.get_file_info(path)
    if info.type == pyarrow.fs.FileType.File:
        return [path]
    pattern = None
    if info.type != pyarrow.fs.FileType.Directory:
        if not any(char in path for char in "*?["):
            raise SetupError(f"Input {path}: no such file or directory")
        pattern, path = path, path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    files = sorted(
        i.path
        for i in infos
        if i.type == pyarrow.fs.FileType.File
        and i.path.endswith(INPUT_SUFFIXES)
        and (pattern is None or fnmatch.fnmatch(i.path, pattern))
    )
    if not files:
        raise SetupError(f"Input {pattern or path}: no .jsonl or .parquet files")
    return files


def output_name(input_path: str, output_format: str) -> str:
    """Named after the input, so that a rerun finds it; the hash keeps same-named inputs apart."""
    digest = hashlib.sha1(input_path.encode("utf-8")).hexdigest()[:12]
    return f"{PurePosixPath(input_path).stem}-{digest}.{output_format}"


def jsonl_lines(stream: pyarrow.NativeFile, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    rest = b""
    while chunk := stream.read(chunk_size):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def read_records(fs: pyarrow.fs.FileSystem, path: str) -> Iterator[Union[Record, BadRecord]]:
    """The file's records, and the malformed ones with their line (JSONL) or row (Parquet)."""
    if path.endswith(".jsonl"):
        with fs.open_input_stream(path) as stream:
            yield from read_jsonl(jsonl_lines(stream), path)
        return
    with fs.open_input_file(path) as stream:
        row_no = 0
        for batch in pyarrow.parquet.ParquetFile(stream).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                row_no += 1
                text = row.pop("text", None)
                yield (
                    Record(text, row, path, {"row": row_no})
                    if isinstance(text, str)
                    else BadRecord(path, {"row": row_no}, "no string field 'text'")
                )


def write_bytes(fs: pyarrow.fs.FileSystem, path: str, content: bytes) -> None:
    with atomic_output(path, "wb", filesystem=fs) as stream:
        stream.write(content)


def write_output(fs: pyarrow.fs.FileSystem, path: str, rows: List[Dict[str, Any]], output_format: str) -> None:
    if output_format == "jsonl":
        write_bytes(fs, path, "".join(json_line(row) for row in rows).encode("utf-8"))
        return
    table = pyarrow.Table.from_pylist(rows) if rows else pyarrow.table({"entities": pyarrow.array([], ENTITY_TYPE)})
    if rows:
        table = table.set_column(
            table.schema.get_field_index("entities"),
            "entities",
            pyarrow.array([row["entities"] for row in rows], ENTITY_TYPE),
        )
    with atomic_output(path, "wb", filesystem=fs) as stream:
        pyarrow.parquet.write_table(table, stream)


class Annotator:
    """A Ray actor: loads the model once, then annotates whole input files, one per call."""

    def __init__(
        self,
        model: str,
        code_paths: str,
        use_gpu: bool,
        batch_size: int,
        output_dir: str,
        output_format: str,
        threads: int,
    ):
        import spacy
        import torch

        torch.set_num_threads(threads)
        import_code_paths(code_paths)
        use_device(0 if use_gpu else -1)  # Ray makes the worker's GPU device 0
        self.nlp = spacy.load(model)
        self.batch_size = batch_size
        self.output_fs, self.output_dir = resolve(output_dir)
        self.output_format = output_format

    def __call__(self, files: Dict[str, numpy.ndarray]) -> Dict[str, list]:
        summaries = [self.annotate_file(str(uri), str(name)) for uri, name in zip(files["input"], files["output"])]
        return {key: [s[key] for s in summaries] for key in summaries[0]}

    def annotate_file(self, uri: str, name: str) -> Dict[str, Any]:
        fs, path = resolve(uri)
        unreadable: List[Dict[str, Any]] = []
        failed: List[Dict[str, Any]] = []
        rows: List[Dict[str, Any]] = []
        records_read = words = 0

        def list_unreadable(bad: BadRecord) -> bool:
            unreadable.append({"source": path, **bad.place, "problem": bad.problem})
            return False  # the file goes on

        for batch in minibatch(readable_records(read_records(fs, path), list_unreadable), size=self.batch_size):
            records_read += len(batch)
            for record, entities in zip(batch, annotate_texts(self.nlp, [r.text for r in batch], self.batch_size)):
                if isinstance(entities, AnnotationFailure):
                    failed.append({"source": path, **record.place, "problem": f"cannot annotate ({entities})"})
                elif self.output_format == "parquet" and (surrogate := lone_surrogate(record.fields)):
                    failed.append(
                        {
                            "source": path,
                            **record.place,
                            "problem": (
                                f"a field holds a lone surrogate ({surrogate}), which Parquet's UTF-8 strings "
                                "cannot store; --format jsonl keeps it as a \\u escape"
                            ),
                        }
                    )
                else:
                    rows.append({**record.fields, "entities": entities})
                    words += len(record.text.split())
        output_path = f"{self.output_dir}/{name}"
        # The side file first: once the output exists, its input is done.
        side_path = f"{output_path}.malformed.jsonl"
        malformed = unreadable + failed
        if malformed:
            write_bytes(
                self.output_fs,
                side_path,
                "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in malformed).encode("utf-8"),
            )
        elif self.output_fs.get_file_info(side_path).type == pyarrow.fs.FileType.File:
            self.output_fs.delete_file(side_path)
        write_output(self.output_fs, output_path, rows, self.output_format)
        return {
            "input": uri,
            "output": output_path,
            "records": records_read + len(unreadable),
            "annotated": len(rows),
            "malformed": len(malformed),
            "words": words,
        }


def worker_packages() -> Dict[str, List[str]]:
    """A Ray runtime_env that ships the project's packages the workers import (annotate, scripts, and
    the packaged code in model_code) to every node."""
    return {"py_modules": [str(PROJECT_DIR / package) for package in ("annotate", "scripts", "model_code")]}


def run_on_ray(
    pending: List[Dict[str, str]],
    address: Optional[str],
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float,
    annotator_kwargs: Dict[str, Any],
    local_gpus: Optional[float] = None,
    annotator: type = Annotator,
) -> List[Dict[str, Any]]:
    """Ray Data hands each pending input file to one of WORKERS actors of class ANNOTATOR, each with
    CPUS_PER_WORKER CPUs and GPUS_PER_WORKER GPUs (a fraction: several actors share one GPU); Ray
    restarts an actor that dies and retries its file. A local Ray (no ADDRESS) schedules LOCAL_GPUS
    GPUs (None: those it detects). Returns a summary per file."""
    import ray

    ray.init(
        address=address or None,
        include_dashboard=False,
        runtime_env=worker_packages(),
        log_to_driver=False,
        **({} if address else {"num_gpus": local_gpus}),
    )
    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_worker > 0 and cluster_gpus < gpus_per_worker:
        ray.shutdown()
        typer.echo(
            f"Error: --gpus-per-worker {gpus_per_worker}, but the Ray cluster has no GPUs. "
            "Fix: run where Ray sees GPUs, or use --gpus-per-worker 0.",
            err=True,
        )
        raise typer.Exit(1)
    if not address and workers * gpus_per_worker > cluster_gpus:
        ray.shutdown()
        typer.echo(
            f"Error: --workers {workers} with --gpus-per-worker {gpus_per_worker} need "
            f"{workers * gpus_per_worker:g} GPUs, and this machine has {cluster_gpus:g}. Fix: fewer workers, "
            f"or a fraction such as --gpus-per-worker {cluster_gpus / workers:g} to share them.",
            err=True,
        )
        raise typer.Exit(1)
    try:
        return (
            ray.data.from_items(pending)
            .map_batches(
                annotator,
                fn_constructor_kwargs=annotator_kwargs,
                batch_size=1,
                concurrency=workers,
                num_cpus=cpus_per_worker,
                num_gpus=gpus_per_worker or None,
            )
            .take_all()
        )
    except ray.exceptions.RayError as err:
        # A worker's one-line setup error (its GPU, say) comes back inside Ray's traceback.
        setup_error = re.search(r"Cannot use GPU [^\n]*", str(err))
        if not setup_error:
            raise
        typer.echo(f"Error: {setup_error.group(0)}", err=True)
        raise typer.Exit(1)
    finally:
        ray.shutdown()  # so that no message of Ray's comes after the summary


@app.command()
def main(
    input_uri: str = typer.Argument(..., metavar="INPUT", help="JSONL/Parquet file, directory or glob (local or URI)"),
    output_dir: str = typer.Argument(..., help="Directory (local or URI) for one output file per input file"),
    model: str = typer.Option("en_conll_distilbert", "--model", "-m", help="Installed package or pipeline dir"),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Ray actors, each holding the model once"),
    cpus_per_worker: float = typer.Option(
        1.0, "--cpus-per-worker", min=0.01, help="CPUs per actor (its torch threads: this, rounded, at least 1)"
    ),
    gpus_per_worker: float = typer.Option(
        0.0,
        "--gpus-per-worker",
        min=0.0,
        help="GPUs per actor; a fraction shares a GPU (0.25: four actors on one); 0 runs on CPUs",
    ),
    local_gpus: Optional[float] = typer.Option(
        None, "--local-gpus", min=0.0, help="GPUs a local Ray schedules (default: the ones it detects)"
    ),
    address: Optional[str] = typer.Option(None, "--address", help="Join this Ray cluster (default: a local Ray)"),
    output_format: str = typer.Option("parquet", "--format", help="parquet or jsonl"),
    batch_size: Optional[int] = typer.Option(
        None,
        "--batch-size",
        "-b",
        min=1,
        help=f"Records per nlp.pipe batch (default: {CPU_BATCH} on CPUs, {GPU_BATCH} on GPUs)",
    ),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files to import first"),
):
    """Find the model's entities in every record of INPUT, on Ray Data."""
    if output_format not in ("parquet", "jsonl"):
        raise typer.BadParameter("--format must be parquet or jsonl")
    with one_line_errors():
        input_fs, input_path = resolve(input_uri)
        inputs = list_inputs(input_fs, input_path)
    prefix = "" if isinstance(input_fs, pyarrow.fs.LocalFileSystem) else input_uri.split("://", 1)[0] + "://"
    output_fs, output_path = resolve(output_dir)
    output_fs.create_dir(output_path, recursive=True)
    to_do = [{"input": prefix + path, "output": output_name(prefix + path, output_format)} for path in inputs]
    done = {info.base_name for info in output_fs.get_file_info(pyarrow.fs.FileSelector(output_path))}
    pending = [item for item in to_do if item["output"] not in done]
    typer.echo(
        f"{len(inputs)} input file(s): {len(inputs) - len(pending)} already done, {len(pending)} to annotate", err=True
    )
    start = time.perf_counter()
    summaries = []
    if pending:
        if gpus_per_worker > 0 and not address:
            with one_line_errors():
                check_device(0)
        annotator_kwargs = {
            "model": str(Path(model).resolve()) if Path(model).exists() else model,
            "code_paths": ",".join(str(Path(p).resolve()) for p in filter(None, code_paths.split(","))),
            "use_gpu": gpus_per_worker > 0,
            "batch_size": batch_size or (GPU_BATCH if gpus_per_worker > 0 else CPU_BATCH),
            "output_dir": output_dir if "://" in output_dir else output_path,
            "output_format": output_format,
            "threads": max(1, round(cpus_per_worker)),
        }
        summaries = run_on_ray(
            pending, address, workers, cpus_per_worker, gpus_per_worker, annotator_kwargs, local_gpus
        )
    seconds = time.perf_counter() - start
    totals = {key: sum(s[key] for s in summaries) for key in ("records", "annotated", "malformed", "words")}
    summary = {
        "files": len(summaries),
        "skipped_files": len(inputs) - len(pending),
        **totals,
        "workers": workers,
        "cpus_per_worker": cpus_per_worker,
        "gpus_per_worker": gpus_per_worker,
        "seconds": round(seconds, 2),
        "words_per_second": round(totals["words"] / seconds, 1) if summaries else 0.0,
    }
    typer.echo(
        f"Annotated {totals['annotated']} of {totals['records']} record(s) in {len(summaries)} file(s), "
        f"{totals['malformed']} malformed; {totals['words']} words in {seconds:.1f} s "
        f"({summary['words_per_second']:.0f} words/s) on {workers} worker(s)",
        err=True,
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    app()
