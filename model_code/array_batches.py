"""spacy-transformers' TransformerModel forward pass from arrays, registered as
"conll.array_forward.v1": the same wordpieces, alignment and per-Doc outputs as spacy-transformers
computes by walking a `Token` object a token, several times a batch, here from the tokens'
character offsets (`doc.to_array`), the tokenizer's offset mapping and NumPy indexing over the batch.
Bundled into the model package: it imports only installed libraries.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy
import torch
from spacy.attrs import IDX, LENGTH, ORTH, SPACY
from spacy.tokens import Doc, Span
from spacy.util import registry
from spacy_transformers.data_classes import FullTransformerBatch, TransformerData
from spacy_transformers.layers.transformer_model import forward as spacy_transformers_forward
from spacy_transformers.truncate import truncate_oversize_splits
from spacy_transformers.util import maybe_flush_pytorch_cache
from thinc.api import Model, torch2xp
from thinc.types import Ragged
from transformers import PreTrainedTokenizerFast
from transformers.utils import ModelOutput


def doc_offsets(flat_spans: List[Span]) -> Dict[Doc, int]:
    """Where each Doc's tokens start in the batch's token positions: the Docs in the order their
    first span comes, all tokens of each (spacy-transformers' get_token_positions, per Doc)."""
    offsets: Dict[Doc, int] = {}
    total = 0
    for span in flat_spans:
        if span.doc not in offsets:
            offsets[span.doc] = total
            total += len(span.doc)
    return offsets


@dataclass
class WindowTokens:
    """The tokens of a batch's windows, read once for the encoding and the alignment. Per token of
    the batch's Docs, end to end in the order of `doc_offsets` (a token's position indexes them): its
    ORTH, SPACY, IDX and LENGTH. Per window: its number of tokens, its first character in its Doc
    and its number of characters. Per token of each window in turn: its position and its window."""

    orth: numpy.ndarray
    spacy: numpy.ndarray
    idx: numpy.ndarray
    length: numpy.ndarray
    n_tokens: numpy.ndarray
    first_char: numpy.ndarray
    n_chars: numpy.ndarray
    positions: numpy.ndarray
    window: numpy.ndarray

    @classmethod
    def of(cls, flat_spans: List[Span], offsets: Dict[Doc, int]) -> "WindowTokens":
        first_position, n_tokens, first_char, n_chars = numpy.array(
            [
                (offsets[span.doc] + span.start, len(span), span.start_char, span.end_char - span.start_char)
                for span in flat_spans
            ],
            dtype="int64",
        ).T
        tokens = numpy.concatenate([doc.to_array([ORTH, SPACY, IDX, LENGTH]) for doc in offsets])
        spacy, idx, length = tokens[:, 1:].astype("int64").T
        return cls(
            orth=tokens[:, 0],
            spacy=spacy,
            idx=idx,
            length=length,
            n_tokens=n_tokens,
            first_char=first_char,
            n_chars=n_chars,
            positions=expand_ranges(first_position, n_tokens),
            window=numpy.repeat(numpy.arange(len(flat_spans)), n_tokens),
        )


def offset_alignment(windows: WindowTokens, offset_mapping: numpy.ndarray) -> Ragged:
    """For each token position, the flat indices (row * width + column) of the wordpieces whose
    characters it covers, sorted: spacy-transformers' get_alignment_via_offset_mapping, from arrays.
    A token covers its characters and the one after it, unless the next token starts there."""
    n_rows, width = offset_mapping.shape[:2]
    positions, row, window_lengths = windows.positions, windows.window, windows.n_chars
    # The windows' characters end to end, one apart, so that one sorted array holds all their tokens.
    char_base = numpy.concatenate([[0], numpy.cumsum(window_lengths + 1)[:-1]])
    starts = windows.idx[positions] - windows.first_char[row]
    next_starts = numpy.append(starts[1:], 0)
    last_of_window = numpy.cumsum(windows.n_tokens) - 1
    next_starts[last_of_window] = window_lengths
    ends = numpy.minimum(starts + windows.length[positions] + 1, next_starts) + char_base[row]
    starts += char_base[row]
    # Each wordpiece's characters within its window (special tokens and padding have none), and
    # the tokens whose characters overlap them: a run of consecutive tokens.
    wp_starts = (offset_mapping[..., 0] + char_base[:, None]).ravel()
    wp_ends = (numpy.minimum(offset_mapping[..., 1], window_lengths[:, None]) + char_base[:, None]).ravel()
    wordpiece = numpy.flatnonzero(wp_ends > wp_starts)
    first = numpy.searchsorted(ends, wp_starts[wordpiece], side="right")
    counts = numpy.maximum(numpy.searchsorted(starts, wp_ends[wordpiece], side="left") - first, 0)
    pairs = positions[expand_ranges(first, counts)] * (n_rows * width) + numpy.repeat(wordpiece, counts)
    # In text order the (token, wordpiece) pairs come sorted, unless a tokenizer's offsets go back.
    if (pairs[1:] < pairs[:-1]).any():
        pairs = numpy.unique(pairs)
    return Ragged(
        (pairs % (n_rows * width)).astype("i"),
        numpy.bincount(pairs // (n_rows * width), minlength=len(windows.idx)).astype("i"),
    )


def expand_ranges(starts: numpy.ndarray, lengths: numpy.ndarray) -> numpy.ndarray:
    """The concatenated ranges starts[i] .. starts[i] + lengths[i] - 1."""
    ends = numpy.cumsum(lengths)
    return numpy.arange(ends[-1] if len(ends) else 0) + numpy.repeat(starts - (ends - lengths), lengths)


@dataclass
class ArrayTransformerBatch(FullTransformerBatch):
    """A FullTransformerBatch that splits per Doc from the Docs' token offsets, not Token objects."""

    doc_token_offsets: Optional[Dict[Doc, int]] = None

    def split_by_doc(self) -> List[TransformerData]:
        outputs = {}
        for key, output in self.model_output.items():
            if isinstance(output, torch.Tensor):
                outputs[key] = torch2xp(output)
            elif isinstance(output, tuple) and all(
                isinstance(t, torch.Tensor) and len(t) == len(self.wordpieces) for t in output
            ):
                outputs[key] = [torch2xp(t) for t in output]
        split, row, wordpieces_before = [], 0, 0
        for doc_spans in self.spans:
            if not doc_spans or len(doc_spans[0]) == 0:
                split.append(TransformerData.empty())
                continue
            offset = self.doc_token_offsets[doc_spans[0].doc]
            rows = slice(row, row + len(doc_spans))
            wordpieces = self.wordpieces[rows]
            align = self.align[offset + doc_spans[0].start : offset + doc_spans[-1].end]
            align.data = align.data - wordpieces_before
            model_output = ModelOutput()
            for key, output in outputs.items():
                model_output[key] = [t[rows] for t in output] if isinstance(output, list) else output[rows]
            split.append(TransformerData(wordpieces=wordpieces, model_output=model_output, align=align))
            wordpieces_before += wordpieces.input_ids.size
            row += len(doc_spans)
        return split


@registry.misc("conll.array_forward.v1")
def array_forward_with(tokenize: Callable) -> Callable[[Model, List[Doc], bool], Tuple[FullTransformerBatch, Callable]]:
    """The TransformerModel's forward pass from arrays.
    tokenize: (tokenizer, spans, WindowTokens) -> (WordpieceBatch, offset mapping) (conll.tokenize.v1)."""

    def array_forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[FullTransformerBatch, Callable]:
        tokenizer = model.tokenizer
        nested_spans = model.attrs["get_spans"](docs)
        flat_spans = [span for doc_spans in nested_spans for span in doc_spans]
        # spacy-transformers' own path where it fails or has nothing to do: its error for a tokenizer
        # without a padding token.
        if (
            not flat_spans
            or not isinstance(tokenizer, PreTrainedTokenizerFast)
            or tokenizer.pad_token_id is None
            or any(len(s) == 0 for s in flat_spans)
        ):
            return spacy_transformers_forward(model, docs, is_train)
        maybe_flush_pytorch_cache(chance=model.attrs.get("flush_cache_chance", 0))
        offsets = doc_offsets(flat_spans)
        windows = WindowTokens.of(flat_spans, offsets)
        wordpieces, offset_mapping = tokenize(tokenizer, flat_spans, windows)
        align = offset_alignment(windows, offset_mapping)
        wordpieces, align = truncate_oversize_splits(wordpieces, align, tokenizer.model_max_length)
        model_output, backprop_tensors = model.layers[0](wordpieces, is_train)
        output = ArrayTransformerBatch(
            spans=nested_spans, wordpieces=wordpieces, model_output=model_output, align=align, doc_token_offsets=offsets
        )

        def backprop(d_output: FullTransformerBatch) -> List[Doc]:
            backprop_tensors(d_output.model_output)
            return docs

        return output, backprop

    return array_forward
