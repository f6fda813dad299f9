"""Records to entities, shared by predict.py, annotate_ray.py and serve.py: one code path for every
annotation, so all read the same records and give the same entities, scores and offsets.

Each entity has the fields of the Hugging Face token-classification pipeline: `entity_group`,
`score` (`ent._.confidence`, rounded to 4 digits), `word`, and `start`/`end` as
character offsets into the text, so `text[start:end] == word`. Texts over `nlp.max_length` are
annotated whole, piece by piece (long_texts.py). A text that cannot be annotated, whatever the
cause, costs only itself: its batch is redone text by text and the failure is returned in its place.
"""

import json
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from spacy.language import Language
from spacy.tokens import Doc, Span

from model_code.long_texts import pipe_texts
from scripts.project_util import first_line

Entities = List[Dict[str, Any]]
# Texts per nlp.pipe batch by default: on a GPU, bigger batches give the transformer fuller forward passes.
CPU_BATCH, GPU_BATCH = 32, 256


class AnnotationFailure(str):
    """Why a text could not be annotated (in the place of its entities)."""


def location(source: str, place: Dict[str, int]) -> str:
    """Where a record is, for messages: `file:3` (a line), `file row 3` (a row), or the file."""
    if "line" in place:
        return f"{source}:{place['line']}"
    return f"{source} row {place['row']}" if "row" in place else source


class Record(NamedTuple):
    """A text to annotate, the other fields of its input record, and where it came from."""

    text: str
    fields: Dict[str, Any]
    source: str
    place: Dict[str, int]  # {"line": n} in JSONL, {"row": n} in Parquet, {} for a whole file

    @property
    def location(self) -> str:
        return location(self.source, self.place)


class BadRecord(NamedTuple):
    """A record that cannot be read, where it is, and why."""

    source: str
    place: Dict[str, int]
    problem: str

    @property
    def location(self) -> str:
        return location(self.source, self.place)


def lone_surrogate(value: Any) -> Optional[str]:
    """The first lone surrogate (a JSON escape such as \\udc80 that is no character) in the strings of
    VALUE, as its escape, or None. UTF-8 cannot encode one."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return f"\\u{ord(value[err.start]):04x}"
        return None
    children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next(filter(None, (lone_surrogate(child) for child in children)), None)


def json_line(record: Dict[str, Any]) -> str:
    """RECORD as one JSON line, characters as they are; where a string holds a lone surrogate, with
    \\u escapes instead, so that the line is still valid JSON in valid UTF-8."""
    return json.dumps(record, ensure_ascii=lone_surrogate(record) is not None) + "\n"


def parse_jsonl_line(raw: bytes) -> Tuple[Optional[Tuple[str, Dict[str, Any]]], str]:
    """(text, other fields), or None and what is wrong with the line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg})"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    if not isinstance(record.get("text"), str):
        return None, "no string field 'text'"
    surrogate = lone_surrogate(record["text"])
    if surrogate:
        return None, f"field 'text' holds a lone surrogate ({surrogate}), which is no character"
    text = record.pop("text")
    return (text, record), ""


def read_jsonl(lines: Iterable[bytes], source: str) -> Iterator[Union[Record, BadRecord]]:
    """The records of JSONL lines; blank lines are skipped."""
    for line_no, raw in enumerate(lines, start=1):
        if raw.strip():
            parsed, problem = parse_jsonl_line(raw)
            yield (
                Record(*parsed, source, {"line": line_no}) if parsed else BadRecord(source, {"line": line_no}, problem)
            )


def readable_records(
    readings: Iterable[Union[Record, BadRecord]], on_bad: Callable[[BadRecord], bool]
) -> Iterator[Record]:
    """The records that could be read; ON_BAD gets each one that could not, and ends the input by
    returning True."""
    for reading in readings:
        if isinstance(reading, Record):
            yield reading
        elif on_bad(reading):
            return


def doc_entities(doc: Doc) -> Entities:
    has_confidence = Span.has_extension("confidence")
    entities = []
    for ent in doc.ents:
        confidence = ent._.confidence if has_confidence else None
        entities.append(
            {
                "entity_group": ent.label_,
                "score": None if confidence is None else round(float(confidence), 4),
                "word": ent.text,
                "start": ent.start_char,
                "end": ent.end_char,
            }
        )
    return entities


def kept_entities(entities: Entities, min_score: float = 0.0, ignore_labels: Iterable[str] = ()) -> Entities:
    """The entities scored at least MIN_SCORE (or without a score), of types not in IGNORE_LABELS."""
    ignored = set(ignore_labels)
    return [e for e in entities if e["entity_group"] not in ignored and (e["score"] is None or e["score"] >= min_score)]


def failure(err: Exception) -> AnnotationFailure:
    return AnnotationFailure(f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__)


def annotate_texts(
    nlp: Language, texts: Sequence[str], batch_size: int = 32
) -> List[Union[Entities, AnnotationFailure]]:
    """The entities of each text, in order, or an AnnotationFailure where a text cannot be annotated."""
    try:
        return [doc_entities(doc) for doc in pipe_texts(nlp, texts, batch_size=batch_size)]
    except Exception:  # find the text(s) at fault; the others of the batch are annotated again, alone
        results: List[Union[Entities, AnnotationFailure]] = []
        for text in texts:
            try:
                results.append(doc_entities(next(pipe_texts(nlp, [text]))))
            except Exception as err:
                results.append(failure(err))
        return results
