"""The wordpieces of a batch's windows from the Rust tokenizer's encodings, registered as
"conll.tokenize.v1": what spacy-transformers' huggingface_tokenize gives, without the Python lists the
tokenizer's __call__ builds. A BERT tokenizer encodes a text word by word, so each distinct word of a
batch is encoded once and the windows are put together from its wordpieces; any other tokenizer gets
the windows' texts whole. Bundled into the model package: it imports only installed libraries.
"""

from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple
from weakref import WeakKeyDictionary

import numpy
from spacy.attrs import ORTH, SPACY
from spacy.tokens import Doc, Span
from spacy.util import registry
from spacy_transformers.data_classes import WordpieceBatch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

# Distinct words per text that encode_words hands the Rust tokenizer: texts enough for its threads.
WORDS_PER_TEXT = 256
# Per tokenizer, the token string of every id (wordpiece_strings).
ID_STRINGS: "WeakKeyDictionary[PreTrainedTokenizerFast, numpy.ndarray]" = WeakKeyDictionary()


def expand_ranges(starts: numpy.ndarray, lengths: numpy.ndarray) -> numpy.ndarray:
    """The concatenated ranges starts[i] .. starts[i] + lengths[i] - 1 (as in array_batches.py: each
    --code file is loaded alone)."""
    ends = numpy.cumsum(lengths)
    return numpy.arange(ends[-1] if len(ends) else 0) + numpy.repeat(starts - (ends - lengths), lengths)


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
    return ["".join(pieces[end - len(array) : end].tolist()) for array, end in zip(arrays, ends)]


def span_texts(spans: List[Span]) -> List[str]:
    """Each span's text, as a slice of its Doc's text (doc_texts)."""
    docs = list(dict.fromkeys(span.doc for span in spans))
    texts = dict(zip(docs, doc_texts(docs)))
    return [texts[span.doc][span.start_char : span.end_char] for span in spans]


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
    if not (
        isinstance(backend.normalizer, (normalizers.BertNormalizer, type(None)))
        and isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
        and isinstance(backend.post_processor, (processors.TemplateProcessing, processors.BertProcessing, type(None)))
    ):
        return None
    if any(
        token.lstrip or token.rstrip or any(char.isspace() for char in token.content)
        for token in backend.get_added_tokens_decoder().values()
    ):
        return None
    probe = backend.encode("a", add_special_tokens=True)
    special = numpy.asarray(probe.special_tokens_mask, dtype=bool)
    text = numpy.flatnonzero(~special)
    if len(text) == 0 or special[text[0] : text[-1] + 1].any():
        return None

    def part(where: slice) -> Tuple[List[int], List[int], List[Tuple[int, int]]]:
        return probe.ids[where], probe.type_ids[where], probe.offsets[where]

    return SpecialTokens(
        before=part(slice(0, text[0])), after=part(slice(text[-1] + 1, None)), text_type_id=probe.type_ids[text[0]]
    )


def encode_words(backend: Tokenizer, words: List[str]) -> Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
    """Each word's wordpieces: their ids and character offsets within the word (in the words'
    order), and how many a word. The words go to the Rust tokenizer a few hundred to a text,
    separated by spaces: one Encoding a word would cost more than the tokenizing."""
    lengths = numpy.fromiter(map(len, words), dtype="int64", count=len(words))
    # Each word's first character in the words joined by spaces: the texts below, end to end.
    word_starts = numpy.cumsum(lengths + 1) - (lengths + 1)
    text_starts = word_starts[::WORDS_PER_TEXT]
    texts = [" ".join(words[i : i + WORDS_PER_TEXT]) for i in range(0, len(words), WORDS_PER_TEXT)]
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    sizes = numpy.fromiter(map(len, encodings), dtype="int64", count=len(encodings))
    ids = numpy.fromiter(chain.from_iterable(encoding.ids for encoding in encodings), dtype="int64", count=sizes.sum())
    offsets = numpy.fromiter(
        chain.from_iterable(chain.from_iterable(encoding.offsets for encoding in encodings)),
        dtype="int64",
        count=sizes.sum() * 2,
    ).reshape(-1, 2)
    offsets += numpy.repeat(text_starts, sizes)[:, None]
    word = numpy.searchsorted(word_starts, offsets[:, 0], side="right") - 1
    offsets -= word_starts[word][:, None]
    return ids, offsets, numpy.bincount(word, minlength=len(words))


def encode_by_word(backend: Tokenizer, spans: List[Span], windows: Any, specials: SpecialTokens) -> Encoded:
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
        text = "".join(texts[i] for i in text_index[word_first[w] : word_first[w] + word_tokens[w]].tolist())
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
    encoded = Encoded(
        sizes=sizes,
        ids=numpy.empty(sizes.sum(), dtype="int64"),
        type_ids=numpy.full(sizes.sum(), specials.text_type_id, dtype="int64"),
        offsets=numpy.empty((sizes.sum(), 2), dtype="int64"),
    )
    in_text = expand_ranges(window_starts + n_before, text_sizes)
    encoded.ids[in_text] = piece_ids[pieces]
    encoded.offsets[in_text] = piece_offsets[pieces] + numpy.repeat(word_char, word_pieces)[:, None]
    for (ids, type_ids, offsets), first in (
        (specials.before, window_starts),
        (specials.after, window_starts + n_before + text_sizes),
    ):
        for i, (special_id, type_id, offset) in enumerate(zip(ids, type_ids, offsets)):
            encoded.ids[first + i], encoded.type_ids[first + i], encoded.offsets[first + i] = (
                special_id,
                type_id,
                offset,
            )
    return encoded


def tokenize(
    tokenizer: PreTrainedTokenizerFast, spans: List[Span], windows: Any
) -> Tuple[WordpieceBatch, numpy.ndarray]:
    """The spans' wordpieces, padded to the longest, and their character offsets: what
    spacy-transformers' huggingface_tokenize gives, from the Rust tokenizer's encodings (the
    tokenizer's __call__ spends more time building Python lists than tokenizing): of each
    distinct word once where the tokenizer encodes word by word (BERT's), else of the spans'
    texts (SPANS, whose tokens WINDOWS holds). The encodings come unpadded, and are padded here in
    arrays: padding in the tokenizer costs it a quarter more time, and twice as many Python objects
    for the offsets."""
    tokenizer.set_truncation_and_padding(
        PaddingStrategy.DO_NOT_PAD, TruncationStrategy.DO_NOT_TRUNCATE, None, 0, None, None
    )
    backend = tokenizer.backend_tokenizer
    specials = word_by_word(backend)
    encoded = encode_by_word(backend, spans, windows, specials) if specials else encode_windows(backend, spans)
    columns = numpy.arange(encoded.sizes.max())
    # Each row's real wordpieces, in order: row-major assignment through this mask fills them in.
    real = (
        (columns < encoded.sizes[:, None])
        if tokenizer.padding_side == "right"
        else (columns >= columns.size - encoded.sizes[:, None])
    )

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
        token_type_ids=(
            padded(encoded.type_ids, tokenizer.pad_token_type_id)
            if "token_type_ids" in tokenizer.model_input_names
            else None
        ),
    )
    return wordpieces, padded(encoded.offsets, 0)


@registry.misc("conll.tokenize.v1")
def tokenize_from_arrays() -> Callable:
    """tokenize: (tokenizer, spans, windows) -> (WordpieceBatch, offset mapping), where windows holds
    the spans' tokens as arrays (array_batches.WindowTokens)."""
    return tokenize
