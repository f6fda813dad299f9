"""spacy-transformers' TransformerModel with two additions, registered as "conll.TransformerModel.v1".

Windows by length: spacy-transformers pads every window of a batch to the longest one, so a
batch of full 128-token windows and short tail windows is about half padding. This model sorts
the windows by wordpiece length and runs them in groups, each padded only to its own longest
window: at inference groups of at most `predict_wordpieces` padded wordpieces; in training a new
group starts at a window shorter than `train_group_fill` times its group's longest, and the
gradient is handed back to each group's own backward pass. The outputs are put back in the
original order and shape, so what follows sees the same tensors at every real wordpiece (the
padding is zeros).

One optimizer pass: thinc's PyTorchShim calls the optimizer once a parameter, with a conversion to
NumPy and several passes over memory each time. With `fused_adam = true` the transformer's
parameters, when they are on the CPU, get the same AdamW step (thinc's Adam: gradient clipping by
each parameter's norm, bias-corrected moments, decoupled weight decay, its moments kept in the
thinc optimizer) all at once: the clipping in torch `_foreach` operations, the moments and the
step in torch's fused Adam kernel. Any other optimizer setting, or a GPU, takes thinc's own loop.

bf16 on the CPU: CPUs with AMX or AVX512-BF16 run bf16 matrix products several times faster than
fp32. `mixed_precision` only autocasts on CUDA, so with `cpu_bf16 = true`, whenever the weights are
on the CPU, the transformer's training forward pass (and so its backward pass) runs under
`torch.autocast("cpu", torch.bfloat16)`, and its inference runs on a bf16 copy of the weights, made
once per batch of Docs (`torch.func.functional_call`): no casts of weights and activations around
every matrix product, and the elementwise work in bf16 too (2% to 13% faster than autocast over the
test split: BENCHMARKS.md). The stored weights and the optimizer stay fp32, and the outputs are
cast back to fp32 for the layers that follow. Switch it off at load time with
`spacy.load(name, config={"components": {"transformer": {"model": {"cpu_bf16": False}}}})`.

Batches from arrays: spacy-transformers finds each window's wordpieces, their alignment to the
tokens and each Doc's share of the outputs by walking spaCy `Token` objects one by one (one Python
object per token, several times per batch), which costs more CPU time than a small transformer's
forward pass on a GPU. With `array_alignment = true` the same wordpieces, alignment and per-Doc
outputs are computed from arrays: the tokens' character offsets (`doc.to_array`), the tokenizer's
offset mapping, and NumPy indexing over the whole batch (see `offset_alignment`). A BERT tokenizer
encodes a text word by word, so each distinct word of a batch is encoded once and the windows are
put together from its wordpieces (`encode_by_word`): the same ids and offsets, with the Rust
tokenizer run over each word once; any other tokenizer gets the windows' texts whole.

Bundled into the packaged model with `spacy package --code`: it imports only installed libraries.
"""
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple
from weakref import WeakKeyDictionary

import numpy
import torch
from spacy.attrs import IDX, LENGTH, ORTH, SPACY
from spacy.tokens import Doc, Span
from spacy.util import registry
from spacy_transformers.data_classes import FullTransformerBatch, TransformerData, WordpieceBatch
from spacy_transformers.layers.transformer_model import forward as spacy_transformers_forward
from spacy_transformers.truncate import truncate_oversize_splits
from spacy_transformers.util import maybe_flush_pytorch_cache
from thinc.api import Model, Optimizer, torch2xp
from thinc.layers.pytorchwrapper import forward as pytorch_forward
from thinc.types import Ragged
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from torch.optim.adam import adam as torch_adam
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy
from transformers.utils import ModelOutput

Forward = Callable[[Model, WordpieceBatch, bool], Tuple[Any, Callable]]
# Distinct words per text that encode_words hands the Rust tokenizer: texts enough for its threads.
WORDS_PER_TEXT = 256
# Per tokenizer, the token string of every id (wordpiece_strings).
ID_STRINGS: "WeakKeyDictionary[PreTrainedTokenizerFast, numpy.ndarray]" = WeakKeyDictionary()


def to_fp32(model_output: ModelOutput) -> ModelOutput:
    # In place: a training backprop callback reads the same ModelOutput, so the gradient flows
    # through the fp32 cast into the bf16 graph.
    for key, value in model_output.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            model_output[key] = value.float()
    return model_output


def cpu_bf16_forward(model: Model, wordpieces: WordpieceBatch, is_train: bool) -> Tuple[Any, Callable]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model_output, backprop = pytorch_forward(model, wordpieces, is_train)
    return to_fp32(model_output), backprop


def bf16_weights(hf_model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """HF_MODEL's floating-point parameters and buffers, cast to bf16."""
    named = chain(hf_model.named_parameters(), hf_model.named_buffers())
    return {name: tensor.to(torch.bfloat16) for name, tensor in named if tensor.is_floating_point()}


def predict_rows(model: Model, wordpieces: WordpieceBatch, weights: Optional[Dict[str, torch.Tensor]]) -> ModelOutput:
    """The transformer's outputs for WORDPIECES, as thinc's PyTorchShim.predict gives them, with the
    model already in eval mode and gradients off (once per batch of Docs, not once per group):
    on WEIGHTS, with the outputs in fp32, when given; else on its own parameters, fp16 autocast on
    CUDA with mixed_precision."""
    shim = model.shims[0]
    inputs, _ = model.attrs["convert_inputs"](model, wordpieces, False)
    if weights is None:
        with torch.autocast(device_type="cuda", enabled=shim._mixed_precision):
            output = shim._model(*inputs.args, **inputs.kwargs)
    else:
        output = to_fp32(torch.func.functional_call(shim._model, weights, inputs.args, inputs.kwargs, strict=False))
    output, _ = model.attrs["convert_outputs"](model, (wordpieces, output), False)
    return output


def groups_by_length(lengths: List[int], max_padded: int) -> List[numpy.ndarray]:
    """Row indices, longest rows first, cut into groups whose padded size fits in max_padded
    (a row longer than that is a group of its own)."""
    order = numpy.argsort(-numpy.asarray(lengths), kind="stable")
    groups, start = [], 0
    while start < len(order):
        rows = max(1, max_padded // max(1, lengths[order[start]]))
        groups.append(order[start:start + rows])
        start += rows
    return groups


def select_rows(wordpieces: WordpieceBatch, rows: numpy.ndarray) -> WordpieceBatch:
    width = max(wordpieces.lengths[i] for i in rows)
    return WordpieceBatch(
        strings=[wordpieces.strings[i] for i in rows],
        input_ids=wordpieces.input_ids[rows, :width],
        attention_mask=wordpieces.attention_mask[rows, :width],
        lengths=[wordpieces.lengths[i] for i in rows],
        token_type_ids=None if wordpieces.token_type_ids is None else wordpieces.token_type_ids[rows, :width],
    )


def scatter(pieces: List[Tuple[torch.Tensor, torch.Tensor]], n_rows: int, width: int) -> torch.Tensor:
    """One tensor of N_ROWS rows from (row index, tensor) pieces; the sequence axis of a
    (rows, wordpieces, hidden) tensor is zero-padded to WIDTH."""
    first = pieces[0][1]
    sequence = first.dim() == 3
    merged = first.new_zeros((n_rows, width, *first.shape[2:]) if sequence else (n_rows, *first.shape[1:]))
    for index, value in pieces:
        if sequence:
            merged[index, : value.shape[1]] = value
        else:
            merged[index] = value
    return merged


def groups_by_fill(lengths: List[int], fill: float) -> List[numpy.ndarray]:
    """Row indices, longest rows first, cut where a row is shorter than FILL times the longest
    row of its group."""
    order = numpy.argsort(-numpy.asarray(lengths), kind="stable")
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or lengths[order[i]] < fill * lengths[order[start]]:
            groups.append(order[start:i])
            start = i
    return groups


def merge_outputs(groups: List[Tuple[torch.Tensor, Any]], n_rows: int, width: int) -> Any:
    """One ModelOutput of N_ROWS rows, padded to WIDTH, from (row index, ModelOutput) groups."""
    merged = {}
    for key, value in groups[0][1].items():
        if isinstance(value, tuple):  # hidden_states: one tensor per layer
            merged[key] = tuple(scatter([(index, output[key][layer]) for index, output in groups], n_rows, width)
                                for layer in range(len(value)))
        else:
            merged[key] = scatter([(index, output[key]) for index, output in groups], n_rows, width)
    return type(groups[0][1])(**merged)


def by_length(cpu_bf16: bool, max_padded: int, train_fill: float) -> Forward:
    """The transformer's forward pass (bf16 on the CPU with CPU_BF16), run on groups of rows of
    similar length (see the module's doc)."""

    def forward_by_length(model: Model, wordpieces: WordpieceBatch, is_train: bool) -> Tuple[Any, Callable]:
        hf_model = model.shims[0]._model
        on_cpu_in_bf16 = cpu_bf16 and hf_model.device.type == "cpu"
        if len(wordpieces) == 0:
            return pytorch_forward(model, wordpieces, is_train)
        # Attention maps have two sequence axes: with output_attentions, one padded batch.
        one_batch = hf_model.config.output_attentions or (train_fill <= 0 if is_train else max_padded <= 0)
        n_rows, width = wordpieces.input_ids.shape
        if not is_train:
            # One bf16 copy of the weights for all the groups of this batch.
            weights = bf16_weights(hf_model) if on_cpu_in_bf16 else None
            hf_model.eval()
            try:
                with torch.no_grad():
                    if one_batch:
                        return predict_rows(model, wordpieces, weights), predict_only
                    groups = []
                    for rows in groups_by_length(wordpieces.lengths, max_padded):
                        output = predict_rows(model, select_rows(wordpieces, rows), weights)
                        groups.append((torch.as_tensor(rows, device=output["last_hidden_state"].device), output))
                    return merge_outputs(groups, n_rows, width), predict_only
            finally:
                hf_model.train()
        forward = cpu_bf16_forward if on_cpu_in_bf16 else pytorch_forward
        # The gradient scaler unscales all gradients after each backward pass: with it, one batch.
        if one_batch or model.shims[0]._grad_scaler._enabled:
            return forward(model, wordpieces, is_train)
        groups, backprops = [], []
        for rows in groups_by_fill(wordpieces.lengths, train_fill):
            output, backprop = forward(model, select_rows(wordpieces, rows), is_train)
            groups.append((torch.as_tensor(rows, device=output["last_hidden_state"].device), output))
            backprops.append(backprop)
        with torch.no_grad():
            merged = merge_outputs(groups, n_rows, width)

        def backprop_groups(d_output: ModelOutput) -> List:
            for (index, output), backprop in zip(groups, backprops):
                group_width = output["last_hidden_state"].shape[1]
                d_group = ModelOutput()
                for key, gradient in d_output.items():
                    d_group[key] = gradient[index, :group_width]
                backprop(d_group)
            return []

        return merged, backprop_groups

    return forward_by_length


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
            [(offsets[span.doc] + span.start, len(span), span.start_char, span.end_char - span.start_char)
             for span in flat_spans], dtype="int64").T
        tokens = numpy.concatenate([doc.to_array([ORTH, SPACY, IDX, LENGTH]) for doc in offsets])
        spacy, idx, length = tokens[:, 1:].astype("int64").T
        return cls(
            orth=tokens[:, 0], spacy=spacy, idx=idx, length=length,
            n_tokens=n_tokens, first_char=first_char, n_chars=n_chars,
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
            elif isinstance(output, tuple) and all(isinstance(t, torch.Tensor) and len(t) == len(self.wordpieces)
                                                   for t in output):
                outputs[key] = [torch2xp(t) for t in output]
        split, row, wordpieces_before = [], 0, 0
        for doc_spans in self.spans:
            if not doc_spans or len(doc_spans[0]) == 0:
                split.append(TransformerData.empty())
                continue
            offset = self.doc_token_offsets[doc_spans[0].doc]
            rows = slice(row, row + len(doc_spans))
            wordpieces = self.wordpieces[rows]
            align = self.align[offset + doc_spans[0].start:offset + doc_spans[-1].end]
            align.data = align.data - wordpieces_before
            model_output = ModelOutput()
            for key, output in outputs.items():
                model_output[key] = [t[rows] for t in output] if isinstance(output, list) else output[rows]
            split.append(TransformerData(wordpieces=wordpieces, model_output=model_output, align=align))
            wordpieces_before += wordpieces.input_ids.size
            row += len(doc_spans)
        return split


def wordpiece_strings(tokenizer: PreTrainedTokenizerFast, input_ids: numpy.ndarray) -> List[List[str]]:
    """The token string of each id, padding included: what convert_ids_to_tokens gives, from a
    table of the vocabulary made once per tokenizer."""
    table = ID_STRINGS.get(tokenizer)
    if table is None or input_ids.max() >= len(table):  # len(tokenizer) takes milliseconds: once
        size = max(len(tokenizer), int(input_ids.max()) + 1)
        backend = tokenizer.backend_tokenizer
        table = ID_STRINGS[tokenizer] = numpy.array([backend.id_to_token(i) for i in range(size)], dtype=object)
    return table[input_ids].tolist()


def doc_texts(docs: List[Doc]) -> List[str]:
    """Each Doc's text, as Doc.text gives it, from arrays of its tokens' words and trailing spaces
    (ORTH, SPACY) and one string lookup per distinct word: Doc.text makes a Token object a token."""
    arrays = [doc.to_array([ORTH, SPACY]) for doc in docs]
    tokens = numpy.concatenate(arrays)
    orths, word_index = numpy.unique(tokens[:, 0], return_inverse=True)
    words = [docs[0].vocab.strings[orth] for orth in orths.tolist()]
    with_space = tokens[:, 1].astype("int64")
    pieces = numpy.array(words + [word + " " for word in words], dtype=object)[word_index + len(words) * with_space]
    ends = numpy.cumsum([len(array) for array in arrays])
    return ["".join(pieces[end - len(array):end].tolist()) for array, end in zip(arrays, ends)]


def span_texts(spans: List[Span]) -> List[str]:
    """Each span's text, as a slice of its Doc's text (doc_texts)."""
    docs = list(dict.fromkeys(span.doc for span in spans))
    texts = dict(zip(docs, doc_texts(docs)))
    return [texts[span.doc][span.start_char:span.end_char] for span in spans]


@dataclass
class Encoded:
    """Each window's wordpieces end to end, special tokens included: how many a window, their ids,
    type ids and character offsets within the window's text."""

    sizes: numpy.ndarray
    ids: numpy.ndarray
    type_ids: numpy.ndarray
    offsets: numpy.ndarray


def encode_windows(backend: Tokenizer, spans: List[Span]) -> Encoded:
    """The Rust tokenizer's encodings of the spans' texts, in flat arrays."""
    encodings = backend.encode_batch(span_texts(spans), add_special_tokens=True)
    sizes = numpy.fromiter(map(len, encodings), dtype="int64", count=len(encodings))

    def flat(values: Iterable[int], per_wordpiece: int = 1) -> numpy.ndarray:
        array = numpy.fromiter(values, dtype="int64", count=sizes.sum() * per_wordpiece)
        return array.reshape(-1, per_wordpiece) if per_wordpiece > 1 else array

    return Encoded(
        sizes=sizes,
        ids=flat(chain.from_iterable(encoding.ids for encoding in encodings)),
        type_ids=flat(chain.from_iterable(encoding.type_ids for encoding in encodings)),
        # From iterators: three times faster than numpy.array over lists of (start, end) tuples.
        offsets=flat(chain.from_iterable(chain.from_iterable(encoding.offsets for encoding in encodings)), 2),
    )


@dataclass
class SpecialTokens:
    """What the tokenizer puts around a single text: ids, type ids and offsets before and after it,
    and the type id of the text's own wordpieces."""

    before: Tuple[List[int], List[int], List[Tuple[int, int]]]
    after: Tuple[List[int], List[int], List[Tuple[int, int]]]
    text_type_id: int


def word_by_word(backend: Tokenizer) -> Optional[SpecialTokens]:
    """The special tokens around a single text when BACKEND encodes a text as its space-separated words'
    encodings end to end: BERT's normalizer and pre-tokenizer work within words and split at
    whitespace, and no added token holds or strips whitespace. None for any other tokenizer."""
    if not (isinstance(backend.normalizer, (normalizers.BertNormalizer, type(None)))
            and isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
            and isinstance(backend.post_processor, (processors.TemplateProcessing, processors.BertProcessing, type(None)))):
        return None
    if any(token.lstrip or token.rstrip or any(char.isspace() for char in token.content)
           for token in backend.get_added_tokens_decoder().values()):
        return None
    probe = backend.encode("a", add_special_tokens=True)
    special = numpy.asarray(probe.special_tokens_mask, dtype=bool)
    text = numpy.flatnonzero(~special)
    if len(text) == 0 or special[text[0]:text[-1] + 1].any():
        return None

    def part(where: slice) -> Tuple[List[int], List[int], List[Tuple[int, int]]]:
        return probe.ids[where], probe.type_ids[where], probe.offsets[where]

    return SpecialTokens(before=part(slice(0, text[0])), after=part(slice(text[-1] + 1, None)),
                         text_type_id=probe.type_ids[text[0]])


def encode_words(backend: Tokenizer, words: List[str]) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """Each word's wordpieces: their ids and character offsets within the word (in the words'
    order), and how many a word. The words go to the Rust tokenizer a few hundred to a text,
    separated by spaces: one Encoding a word would cost more than the tokenizing."""
    lengths = numpy.fromiter(map(len, words), dtype="int64", count=len(words))
    # Each word's first character in the words joined by spaces: the texts below, end to end.
    word_starts = numpy.cumsum(lengths + 1) - (lengths + 1)
    text_starts = word_starts[::WORDS_PER_TEXT]
    texts = [" ".join(words[i:i + WORDS_PER_TEXT]) for i in range(0, len(words), WORDS_PER_TEXT)]
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    sizes = numpy.fromiter(map(len, encodings), dtype="int64", count=len(encodings))
    ids = numpy.fromiter(chain.from_iterable(encoding.ids for encoding in encodings), dtype="int64", count=sizes.sum())
    offsets = numpy.fromiter(chain.from_iterable(chain.from_iterable(encoding.offsets for encoding in encodings)),
                             dtype="int64", count=sizes.sum() * 2).reshape(-1, 2)
    offsets += numpy.repeat(text_starts, sizes)[:, None]
    word = numpy.searchsorted(word_starts, offsets[:, 0], side="right") - 1
    offsets -= word_starts[word][:, None]
    return ids, offsets, numpy.bincount(word, minlength=len(words))


def encode_by_word(backend: Tokenizer, spans: List[Span], windows: WindowTokens, specials: SpecialTokens) -> Encoded:
    """What encode_windows gives, for a tokenizer that encodes word by word (word_by_word): each
    distinct word of the batch is encoded once, and the windows are put together from its
    wordpieces, their offsets moved to the word's place in the window, between the special tokens.
    A word here is a run of spaCy tokens with no space between them ("didn't" is two tokens)."""
    positions = windows.positions
    # A word starts each window, and after each token followed by a space.
    starts_word = numpy.ones(len(positions), dtype=bool)
    starts_word[1:] = windows.spacy[positions[:-1]] != 0
    starts_word[numpy.cumsum(windows.n_tokens)[:-1]] = True
    word_first = numpy.flatnonzero(starts_word)
    word_tokens = numpy.diff(numpy.append(word_first, len(positions)))
    # Each word's text: a token's own text, one lookup per distinct token; joined where a word has several.
    orths, text_index = numpy.unique(windows.orth[positions], return_inverse=True)
    strings = spans[0].doc.vocab.strings
    texts = [strings[orth] for orth in orths.tolist()]
    word_text = text_index[word_first]
    joined: Dict[str, int] = {}
    for w in numpy.flatnonzero(word_tokens > 1).tolist():
        text = "".join(texts[i] for i in text_index[word_first[w]:word_first[w] + word_tokens[w]].tolist())
        word_text[w] = joined.setdefault(text, len(texts) + len(joined))
    texts += list(joined)
    distinct, word_distinct = numpy.unique(word_text, return_inverse=True)
    piece_ids, piece_offsets, pieces_of = encode_words(backend, [texts[i] for i in distinct.tolist()])
    # The windows' wordpieces, word by word, and where each word starts in its window's text.
    word_pieces = pieces_of[word_distinct]
    pieces = expand_ranges((numpy.cumsum(pieces_of) - pieces_of)[word_distinct], word_pieces)
    word_window = windows.window[word_first]
    word_char = windows.idx[positions[word_first]] - windows.first_char[word_window]
    text_sizes = numpy.bincount(word_window, weights=word_pieces, minlength=len(spans)).astype("int64")
    n_before, n_after = len(specials.before[0]), len(specials.after[0])
    sizes = text_sizes + n_before + n_after
    window_starts = numpy.cumsum(sizes) - sizes
    encoded = Encoded(sizes=sizes, ids=numpy.empty(sizes.sum(), dtype="int64"),
                      type_ids=numpy.full(sizes.sum(), specials.text_type_id, dtype="int64"),
                      offsets=numpy.empty((sizes.sum(), 2), dtype="int64"))
    in_text = expand_ranges(window_starts + n_before, text_sizes)
    encoded.ids[in_text] = piece_ids[pieces]
    encoded.offsets[in_text] = piece_offsets[pieces] + numpy.repeat(word_char, word_pieces)[:, None]
    for (ids, type_ids, offsets), first in ((specials.before, window_starts),
                                            (specials.after, window_starts + n_before + text_sizes)):
        for i, (special_id, type_id, offset) in enumerate(zip(ids, type_ids, offsets)):
            encoded.ids[first + i], encoded.type_ids[first + i], encoded.offsets[first + i] = special_id, type_id, offset
    return encoded


def tokenize(tokenizer: PreTrainedTokenizerFast, spans: List[Span],
             windows: WindowTokens) -> Tuple[WordpieceBatch, numpy.ndarray]:
    """The spans' wordpieces, padded to the longest, and their character offsets: what
    spacy-transformers' huggingface_tokenize gives, from the Rust tokenizer's encodings (the
    tokenizer's __call__ spends more time building Python lists than tokenizing): of each
    distinct word once where the tokenizer encodes word by word (BERT's), else of the spans'
    texts (SPANS, whose tokens WINDOWS holds). The encodings come unpadded, and are padded here in arrays: padding in the tokenizer
    costs it a quarter more time, and twice as many Python objects for the offsets."""
    tokenizer.set_truncation_and_padding(PaddingStrategy.DO_NOT_PAD, TruncationStrategy.DO_NOT_TRUNCATE, None, 0,
                                         None, None)
    backend = tokenizer.backend_tokenizer
    specials = word_by_word(backend)
    encoded = encode_by_word(backend, spans, windows, specials) if specials else encode_windows(backend, spans)
    columns = numpy.arange(encoded.sizes.max())
    # Each row's real wordpieces, in order: row-major assignment through this mask fills them in.
    real = (columns < encoded.sizes[:, None]) if tokenizer.padding_side == "right" else (
        columns >= columns.size - encoded.sizes[:, None])

    def padded(values: numpy.ndarray, pad: int) -> numpy.ndarray:
        array = numpy.full((*real.shape, *values.shape[1:]), pad, dtype="int64")
        array[real] = values
        return array

    input_ids = padded(encoded.ids, tokenizer.pad_token_id)
    wordpieces = WordpieceBatch(
        strings=wordpiece_strings(tokenizer, input_ids),
        input_ids=input_ids,
        attention_mask=real.astype("float32"),
        lengths=(input_ids != tokenizer.pad_token_id).sum(axis=1).tolist(),
        token_type_ids=(padded(encoded.type_ids, tokenizer.pad_token_type_id)
                        if "token_type_ids" in tokenizer.model_input_names else None),
    )
    return wordpieces, padded(encoded.offsets, 0)


def array_forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[FullTransformerBatch, Callable]:
    """spacy-transformers' TransformerModel forward pass, with the wordpieces, the alignment and
    the per-Doc split computed from arrays (see the module's doc)."""
    tokenizer = model.tokenizer
    nested_spans = model.attrs["get_spans"](docs)
    flat_spans = [span for doc_spans in nested_spans for span in doc_spans]
    # spacy-transformers' own path where it fails or has nothing to do: its error for a tokenizer
    # without a padding token.
    if (not flat_spans or not isinstance(tokenizer, PreTrainedTokenizerFast) or tokenizer.pad_token_id is None
            or any(len(s) == 0 for s in flat_spans)):
        return spacy_transformers_forward(model, docs, is_train)
    maybe_flush_pytorch_cache(chance=model.attrs.get("flush_cache_chance", 0))
    offsets = doc_offsets(flat_spans)
    windows = WindowTokens.of(flat_spans, offsets)
    wordpieces, offset_mapping = tokenize(tokenizer, flat_spans, windows)
    align = offset_alignment(windows, offset_mapping)
    wordpieces, align = truncate_oversize_splits(wordpieces, align, tokenizer.model_max_length)
    model_output, backprop_tensors = model.layers[0](wordpieces, is_train)
    output = ArrayTransformerBatch(spans=nested_spans, wordpieces=wordpieces, model_output=model_output,
                                   align=align, doc_token_offsets=offsets)

    def backprop(d_output: FullTransformerBatch) -> List[Doc]:
        backprop_tensors(d_output.model_output)
        return docs

    return output, backprop


def uses_fused_adam(optimizer: Optimizer) -> bool:
    """Whether fused_adam_update does what thinc's Optimizer would: Adam with decoupled weight
    decay, no parameter averages, no RAdam."""
    return (optimizer.b1 > 0 and optimizer.b2 > 0 and not optimizer.use_radam and optimizer.averages is None
            and (optimizer.L2_is_weight_decay or optimizer.L2 == 0))


def fused_adam_update(shim: Any, optimizer: Optimizer) -> None:
    """thinc's Optimizer.__call__ for every parameter of SHIM's model: the gradients clipped by
    their norms in one foreach pass, torch's fused Adam kernel, then the decoupled weight decay."""
    named = [(name, p) for name, p in shim._model.named_parameters() if p.grad is not None and p.numel() > 0]
    if not named:
        return
    by_count: dict = {}
    for name, p in named:
        key = (shim.id, name)
        optimizer.nr_update[key] += 1
        if key not in optimizer.mom1:
            optimizer.mom1[key] = numpy.zeros(p.numel(), dtype="float32")
            optimizer.mom2[key] = numpy.zeros(p.numel(), dtype="float32")
        by_count.setdefault(optimizer.nr_update[key], []).append((key, p))
    grads = [p.grad for _, p in named]
    # spaCy updates the transformer right after its forward pass, before the components that
    # listen to it backpropagate into it (so with the gradient of the batch before). Through
    # .data the writes, as thinc's NumPy writes, stay out of autograd's version checks.
    params = [p.data for _, p in named]
    b1, b2, learn_rate = optimizer.b1, optimizer.b2, optimizer.learn_rate
    with torch.no_grad():
        if optimizer.grad_clip:
            norms = torch.stack(torch._foreach_norm(grads))
            scales = torch.where(norms >= optimizer.grad_clip, optimizer.grad_clip / norms, torch.ones_like(norms))
            torch._foreach_mul_(grads, list(scales.unbind()))
        for count, keyed in by_count.items():
            group = [p.data for _, p in keyed]
            # thinc scales the step by sqrt(1 - b2^t) / (1 - b1^t) and adds eps to sqrt(mom2);
            # torch divides sqrt(mom2) by sqrt(1 - b2^t) before adding eps: the same step with
            # eps / sqrt(1 - b2^t). The moments stay in thinc's optimizer; torch works on views.
            torch_adam(
                group, [p.grad for _, p in keyed],
                [torch.from_numpy(optimizer.mom1[key]).view_as(p) for key, p in keyed],
                [torch.from_numpy(optimizer.mom2[key]).view_as(p) for key, p in keyed],
                [], [torch.tensor(float(count - 1)) for _ in group], fused=True,
                amsgrad=False, maximize=False, beta1=b1, beta2=b2, lr=learn_rate, weight_decay=0.0,
                eps=optimizer.eps / (1 - b2 ** count) ** 0.5,
            )
        if optimizer.L2:
            torch._foreach_mul_(params, 1 - learn_rate * optimizer.L2)
        torch._foreach_zero_(grads)


def fused_finish_update(shim: Any) -> Callable[[Optimizer], None]:
    """SHIM's finish_update, with fused_adam_update where it applies."""

    def finish_update(optimizer: Optimizer) -> None:
        on_cpu = all(p.device.type == "cpu" for p in shim._model.parameters())
        if on_cpu and not shim._grad_scaler._enabled and uses_fused_adam(optimizer):
            fused_adam_update(shim, optimizer)
        else:
            type(shim).finish_update(shim, optimizer)

    return finish_update


def predict_only(_: Any) -> None:
    raise ValueError("conll.TransformerModel.v1: the grouped forward pass is for inference only")


@registry.architectures("conll.TransformerModel.v1")
def create_transformer_model(
    name: str,
    get_spans: Callable,
    tokenizer_config: dict = {},
    transformer_config: dict = {},
    mixed_precision: bool = False,
    grad_scaler_config: dict = {},
    cpu_bf16: bool = False,
    predict_wordpieces: int = 4096,
    train_group_fill: float = 0.7,
    fused_adam: bool = True,
    array_alignment: bool = True,
) -> Model[List[Doc], FullTransformerBatch]:
    """spacy-transformers.TransformerModel.v3, plus `cpu_bf16`, plus windows run in groups of
    similar length: at inference at most `predict_wordpieces` padded wordpieces a forward pass,
    in training a new group at a window shorter than `train_group_fill` times the group's longest
    (0 for either: one padded batch, as TransformerModel.v3 does), plus `fused_adam`: one
    optimizer pass over all the transformer's parameters on the CPU, plus `array_alignment`: the
    wordpieces, their alignment and the per-Doc split from arrays instead of Token objects."""
    model = registry.architectures.get("spacy-transformers.TransformerModel.v3")(
        name,
        get_spans=get_spans,
        tokenizer_config=tokenizer_config,
        transformer_config=transformer_config,
        mixed_precision=mixed_precision,
        grad_scaler_config=grad_scaler_config,
    )
    if array_alignment:
        model._func = array_forward
    transformer = model.layers[0]
    transformer._func = by_length(cpu_bf16, predict_wordpieces, train_group_fill)
    if fused_adam:
        shim = transformer.shims[0]
        shim.finish_update = fused_finish_update(shim)
    return model
