"""The "entity_confidence" component: `ent._.confidence`, the probability that an entity is right.
The NER's own probability of each greedy entity (its softmax over the actions that build the entity
and those on the `boundary` tokens on each side, from the NER's step model over its token vectors)
is kept in `ent._.raw_confidence` and mapped by an isotonic regression fitted on dev (calibrate.py,
stored as calibration.json). Bundled into the model package: it imports only installed libraries.
"""

import json
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union
from weakref import WeakKeyDictionary

import numpy
from spacy.language import Language
from spacy.ml.parser_model import ParserStepModel
from spacy.tokens import Doc, Span
from spacy.util import minibatch
from thinc.api import Model

for extension in ("confidence", "raw_confidence"):
    if not Span.has_extension(extension):
        Span.set_extension(extension, default=None)
# Added to the calibrated confidence times the NER's probability: it makes the isotonic map, whose
# steps are flat, strictly increasing, and moves no confidence by more than this.
TIE_BREAK = 1e-6


def precomputed(tokvecs) -> Model:
    """A layer that returns the given token vectors, whatever its input."""
    return Model("precomputed_tokvecs", lambda model, docs, is_train: (tokvecs, lambda d_tokvecs: d_tokvecs))


def greedy_features(ents_per_doc: List[Tuple[Span, ...]], lengths: List[int], class_index: Dict[str, int]):
    """The NER's state features before each token's action on its own greedy path, and that
    action: token rows into the Docs' token vectors (the next token, the open entity's first token
    and the token before it, -1 where none), one row per token of every Doc."""
    n_tokens = sum(lengths)
    ids = numpy.full((n_tokens, 3), -1, dtype="i")
    ids[:, 0] = numpy.arange(n_tokens)
    actions = numpy.full(n_tokens, class_index["O"], dtype="i")
    offset = 0
    for ents, length in zip(ents_per_doc, lengths):
        for ent in ents:
            first, last = offset + ent.start, offset + ent.end - 1
            if first == last:
                actions[first] = class_index[f"U-{ent.label_}"]
                continue
            actions[first] = class_index[f"B-{ent.label_}"]
            actions[first + 1 : last] = class_index[f"I-{ent.label_}"]
            actions[last] = class_index[f"L-{ent.label_}"]
            ids[first + 1 : last + 1, 1] = first
            ids[first + 1 : last + 1, 2] = numpy.arange(first, last)
        offset += length
    return ids, actions


class Calibration:
    """A monotone map of the NER's probability to a calibrated confidence: linear interpolation
    between the points of an isotonic fit."""

    def __init__(self, x: Sequence[float], y: Sequence[float]):
        if len(x) != len(y) or len(x) < 2 or list(x) != sorted(x) or list(y) != sorted(y):
            raise ValueError("a calibration needs at least two points, x and y both non-decreasing")
        self.x, self.y = numpy.asarray(x, dtype="float64"), numpy.asarray(y, dtype="float64")

    def __call__(self, probability: Union[float, numpy.ndarray]) -> Union[float, numpy.ndarray]:
        calibrated = numpy.interp(probability, self.x, self.y)
        confidence = (calibrated + TIE_BREAK * probability) / (1 + TIE_BREAK)
        return float(confidence) if numpy.isscalar(probability) else confidence

    def to_json(self) -> Dict[str, List[float]]:
        return {"x": self.x.tolist(), "y": self.y.tolist()}


class EntityConfidence:
    def __init__(self, nlp: Language, name: str, ner_name: str, boundary: int):
        self.calibration: Optional[Calibration] = None
        self.nlp = nlp
        self.name = name
        self.ner_name = ner_name
        self.boundary = boundary
        self.ner_token_vectors: "WeakKeyDictionary[Doc, object]" = WeakKeyDictionary()
        self.token_vectors_forward: Optional[Callable] = None
        if nlp.has_pipe(ner_name):
            self.remember_ner_token_vectors()

    def __call__(self, doc: Doc) -> Doc:
        self.set_confidence([doc])
        return doc

    def to_disk(self, path: Path, exclude: Iterable[str] = tuple()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        calibration = self.calibration.to_json() if self.calibration else None
        (path / "calibration.json").write_text(json.dumps(calibration), encoding="utf-8")

    def from_disk(self, path: Path, exclude: Iterable[str] = tuple()) -> "EntityConfidence":
        # A pipeline assembled before calibrate.py ran has no calibration: the NER's probability is used.
        path = Path(path) / "calibration.json"
        calibration = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        self.set_calibration(*((calibration["x"], calibration["y"]) if calibration else (None, None)))
        return self

    def set_calibration(self, x: Optional[Sequence[float]], y: Optional[Sequence[float]]) -> None:
        """Map the NER's probability x to the confidence y (interpolated); None: no calibration."""
        self.calibration = None if x is None else Calibration(x, y)

    def pipe(self, docs: Iterable[Doc], batch_size: int = 32) -> Iterator[Doc]:
        for batch in minibatch(docs, size=batch_size):
            self.set_confidence(batch)
            yield from batch

    def step_model(self, docs: List[Doc], tokvecs) -> ParserStepModel:
        """The NER's step model over DOCS, reading the token vectors TOKVECS."""
        ner = self.nlp.get_pipe(self.ner_name)
        _, lower, upper = ner.model.layers
        return ParserStepModel(
            docs,
            [precomputed(tokvecs), lower, upper],
            has_upper=ner.model.attrs["has_upper"],
            unseen_classes=ner.model.attrs["unseen_classes"],
            train=False,
        )

    def greedy_log_probs(self, docs: List[Doc], ents_per_doc: List[Tuple[Span, ...]], tokvecs) -> numpy.ndarray:
        """log P of the action the greedy NER took at each token, under the NER's own softmax: all
        tokens at once, as the states on the greedy path are known from its entities."""
        ner = self.nlp.get_pipe(self.ner_name)
        class_index = {ner.moves.get_class_name(i): i for i in range(ner.moves.n_moves)}
        ids, actions = greedy_features(ents_per_doc, [len(doc) for doc in docs], class_index)
        step_model = self.step_model(docs, tokvecs)
        scores = ner.model.ops.to_numpy(step_model.state2vec(ids, False)[0]).astype("float32")
        if ner.model.attrs["has_upper"]:
            scores = ner.model.ops.to_numpy(step_model.vec2scores.predict(scores)).astype("float32")
        step_model.clear_memory()
        log_z = numpy.logaddexp.reduce(scores, axis=1)
        return scores[numpy.arange(len(actions)), actions] - log_z

    def remember_ner_token_vectors(self) -> None:
        """From now on, keep each Doc's rows of the token vectors that the NER computes at inference."""
        tok2vec = self.nlp.get_pipe(self.ner_name).model.get_ref("tok2vec")
        forward, remembered = tok2vec._func, self.ner_token_vectors

        def forward_and_remember(model: Model, docs: List[Doc], is_train: bool):
            tokvecs, backprop = forward(model, docs, is_train)
            if not is_train:
                ends = numpy.cumsum([len(doc) for doc in docs])
                for doc, end in zip(docs, ends.tolist()):
                    remembered[doc] = tokvecs[end - len(doc) : end]
            return tokvecs, backprop

        self.token_vectors_forward = forward
        tok2vec._func = forward_and_remember

    def token_vectors(self, docs: List[Doc]):
        """The NER's token vectors for DOCS, the rows of all in one array: those the NER computed on
        them, or anew where it did not."""
        if self.token_vectors_forward is None:
            self.remember_ner_token_vectors()
        remembered = [self.ner_token_vectors.pop(doc, None) for doc in docs]
        ner_model = self.nlp.get_pipe(self.ner_name).model
        if all(rows is not None and len(rows) == len(doc) for rows, doc in zip(remembered, docs)):
            return ner_model.ops.xp.concatenate(remembered)
        return self.token_vectors_forward(ner_model.get_ref("tok2vec"), docs, False)[0]

    def set_confidence(self, docs: List[Doc]) -> None:
        with_ents = []
        for doc in docs:
            ents = doc.ents  # builds its Spans anew: once
            if ents:
                with_ents.append((doc, ents))
            else:
                self.ner_token_vectors.pop(doc, None)
        if not with_ents:
            return
        docs = [doc for doc, _ in with_ents]
        ents_per_doc = [ents for _, ents in with_ents]
        log_probs = self.greedy_log_probs(docs, ents_per_doc, self.token_vectors(docs))
        # Each entity's log P, with BOUNDARY tokens each side: a difference of running sums.
        running = numpy.concatenate([[0.0], numpy.cumsum(log_probs, dtype="float64")])
        ents, starts, ends, offset = [], [], [], 0
        for doc, doc_ents in with_ents:
            for ent in doc_ents:
                ents.append(ent)
                starts.append(offset + max(0, ent.start - self.boundary))
                ends.append(offset + min(len(doc), ent.end + self.boundary))
            offset += len(doc)
        # Clipped: a product of probabilities can come out a hair over 1 in floating point.
        probabilities = numpy.minimum(1.0, numpy.exp(running[ends] - running[starts]))
        confidences = self.calibration(probabilities) if self.calibration else probabilities
        for ent, probability, confidence in zip(ents, probabilities.tolist(), confidences.tolist()):
            extensions = ent._
            extensions.raw_confidence, extensions.confidence = probability, confidence


@Language.factory("entity_confidence", default_config={"ner_name": "ner", "boundary": 1})
def make_entity_confidence(nlp: Language, name: str, ner_name: str, boundary: int) -> EntityConfidence:
    return EntityConfidence(nlp, name, ner_name, boundary)
