"""Texts of any length: `annotate_long_text(nlp, text)` annotates a text over `nlp.max_length` piece
by piece, in overlapping pieces of whole tokens cut outside every entity and on the transformer's
window grid, so the entities are those of the whole text at once, with memory bounded by the piece;
`pipe_texts(nlp, texts)` is `nlp.pipe` that sends the long ones there. Bundled into the model
package: it imports only installed libraries.
"""

from typing import Iterable, Iterator, List, Optional, Tuple

from spacy.language import Language
from spacy.tokens import Doc, Span


def window_stride(nlp: Language) -> int:
    """The stride of the transformer's strided windows, or 1 where it has none."""
    get_spans = nlp.config.get("components", {}).get("transformer", {}).get("model", {}).get("get_spans", {})
    return int(get_spans.get("stride", 1)) if "strided_spans" in str(get_spans.get("@span_getters", "")) else 1


def cut_position(doc: Doc, offset: int, start: int, limit: int) -> int:
    """The last token in (start, limit], as an index into the whole text, that is not inside an
    entity of DOC (a piece starting at token OFFSET); LIMIT when there is none."""
    for i in range(limit, start, -1):
        if doc[i - offset].ent_iob_ != "I":
            return i
    return limit


def annotate_long_text(nlp: Language, text: str, piece_tokens: int = 2_500, context_tokens: int = 256) -> Doc:
    """One Doc of TEXT, whatever its length, with the entities of the pipeline found piece by piece."""
    if piece_tokens <= 3 * context_tokens:
        raise ValueError(f"piece_tokens ({piece_tokens}) must be more than 3 x context_tokens ({context_tokens})")
    whole = nlp.tokenizer(text)
    stride = window_stride(nlp)
    has_confidence = Span.has_extension("confidence")
    entities: List[Tuple[int, int, str, Optional[float]]] = []
    start = 0  # entities starting before this token are decided
    while start < len(whole):
        piece_start = max(0, start - context_tokens) // stride * stride
        piece_end = min(len(whole), piece_start + piece_tokens)
        # A Doc goes through the pipeline without the length check of nlp(text).
        piece = nlp(whole[piece_start:piece_end].as_doc())
        cut = (
            len(whole)
            if piece_end == len(whole)
            else cut_position(piece, piece_start, start, piece_end - context_tokens)
        )
        entities += [
            (piece_start + e.start, piece_start + e.end, e.label_, e._.confidence if has_confidence else None)
            for e in piece.ents
            if start <= piece_start + e.start and piece_start + e.end <= cut
        ]
        start = cut
    whole.ents = [Span(whole, ent_start, ent_end, label=label) for ent_start, ent_end, label, _ in entities]
    if has_confidence:
        for ent, (_, _, _, confidence) in zip(whole.ents, entities):
            ent._.confidence = confidence
    return whole


def pipe_texts(nlp: Language, texts: Iterable[str], batch_size: int = 32) -> Iterator[Doc]:
    """`nlp.pipe(texts)`, with the texts over `nlp.max_length` annotated by `annotate_long_text`."""

    def short_texts() -> Iterator[Tuple[str, Optional[str]]]:
        for text in texts:
            # A long text passes through nlp.pipe as an empty Doc, so that it comes out in its turn.
            yield ("", text) if len(text) > nlp.max_length else (text, None)

    for doc, long_text in nlp.pipe(short_texts(), as_tuples=True, batch_size=batch_size):
        yield doc if long_text is None else annotate_long_text(nlp, long_text)
