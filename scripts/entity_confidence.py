"""A confidence in [0, 1] for every entity: `ent._.confidence`.

The pipeline component "entity_confidence" runs after the NER. It keeps the NER's greedy
entities and scores each one by beam search over the NER's own transitions: the confidence
of an entity is the total probability of the beam's complete analyses that contain exactly
that span with that label. Each step's transition scores are turned into log-probabilities
with a softmax over all actions, the distribution the greedy NER was trained with (spaCy's
`cpu_log_loss`), so an analysis's probability is the product of its steps' probabilities.
(spaCy's own `beam_parse` sums raw scores, which makes a greedy model's beam almost always
sure of itself.)

The beam runs only around the entities: on segments that hold each greedy entity with
`context` tokens on both sides (segments that overlap are merged, and cut again at a token
outside the entities once longer than `max_segment`). The NER's features are local (the next
token, the open entity's first token and the token before), so a segment outside which no
entity is open gives the beam of the whole Doc there; text without entities costs nothing,
and the cost grows with the text's length, not with its square (a beam state copies arrays as
long as its Doc at every step). The segments reuse the NER's token vectors, computed once per
Doc from the transformer output already stored on it, so the confidences cost NER steps only.

The beam's probability is then calibrated: `ent._.confidence` is a monotone map of it, fitted on
the dev split (scripts/calibrate.py: isotonic regression of "the entity is right" on the beam's
probability), so that among entities with confidence about p, about a fraction p is right. The
beam's own probability stays in `ent._.raw_confidence`. The map is stored with the component
(calibration.json) and is strictly increasing, so it orders entities as the beam does.

Switch it off with `spacy.load("en_conll_distilbert", exclude=["entity_confidence"])`;
`ent._.confidence` is then None.

Bundled into the packaged model with `spacy package --code`: it imports only installed libraries.
"""
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.ml.parser_model import ParserStepModel
from spacy.pipeline._parser_internals._beam_utils import BeamBatch
from spacy.tokens import Doc, Span
from spacy.util import minibatch
from thinc.api import Model

for extension in ("confidence", "raw_confidence"):
    if not Span.has_extension(extension):
        Span.set_extension(extension, default=None)
# Added to the calibrated confidence times the beam's probability: it makes the isotonic map, whose
# steps are flat, strictly increasing, and moves no confidence by more than this.
TIE_BREAK = 1e-6

Segment = Tuple[int, int, int]  # doc index, first token, end token


def entity_segments(ents: Iterable[Span], length: int, context: int, max_segment: int) -> List[Tuple[int, int]]:
    """Token ranges that hold every entity (of a Doc of LENGTH tokens) with CONTEXT tokens around
    it, merged where they overlap, and cut halfway between two entities where a merge would pass
    MAX_SEGMENT."""
    segments: List[List[int]] = []  # start, end, end of the segment's last entity
    for ent in ents:
        start, end = max(0, ent.start - context), min(length, ent.end + context)
        if segments and start < segments[-1][1]:
            if end - segments[-1][0] <= max_segment:
                segments[-1][1:] = [end, ent.end]
                continue
            start = segments[-1][1] = (segments[-1][2] + ent.start) // 2
        segments.append([start, end, ent.end])
    return [(start, end) for start, end, _ in segments]


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
            actions[first + 1:last] = class_index[f"I-{ent.label_}"]
            actions[last] = class_index[f"L-{ent.label_}"]
            ids[first + 1:last + 1, 1] = first
            ids[first + 1:last + 1, 2] = numpy.arange(first, last)
        offset += length
    return ids, actions


class Calibration:
    """A monotone map of the beam's probability to a calibrated confidence: linear interpolation
    between the points of an isotonic fit."""

    def __init__(self, x: Sequence[float], y: Sequence[float]):
        if len(x) != len(y) or len(x) < 2 or list(x) != sorted(x) or list(y) != sorted(y):
            raise ValueError("a calibration needs at least two points, x and y both non-decreasing")
        self.x, self.y = numpy.asarray(x, dtype="float64"), numpy.asarray(y, dtype="float64")

    def __call__(self, probability: float) -> float:
        calibrated = float(numpy.interp(probability, self.x, self.y))
        return (calibrated + TIE_BREAK * probability) / (1 + TIE_BREAK)

    def to_json(self) -> Dict[str, List[float]]:
        return {"x": self.x.tolist(), "y": self.y.tolist()}


class EntityConfidence:
    def __init__(self, nlp: Language, name: str, ner_name: str, beam_width: int, beam_density: float,
                 context: int, max_segment: int, sure: float):
        self.calibration: Optional[Calibration] = None
        self.nlp = nlp
        self.name = name
        self.ner_name = ner_name
        self.beam_width = beam_width
        self.beam_density = beam_density
        self.context = context
        self.max_segment = max_segment
        self.sure = sure

    def __call__(self, doc: Doc) -> Doc:
        self.set_confidence([doc])
        return doc

    def to_disk(self, path: Path, exclude: Iterable[str] = tuple()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        calibration = self.calibration.to_json() if self.calibration else None
        (path / "calibration.json").write_text(json.dumps(calibration), encoding="utf-8")

    def from_disk(self, path: Path, exclude: Iterable[str] = tuple()) -> "EntityConfidence":
        # A pipeline assembled before calibrate.py ran has no calibration: the beam's probability is used.
        path = Path(path) / "calibration.json"
        calibration = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        self.set_calibration(*((calibration["x"], calibration["y"]) if calibration else (None, None)))
        return self

    def set_calibration(self, x: Optional[Sequence[float]], y: Optional[Sequence[float]]) -> None:
        """Map the beam's probability x to the confidence y (interpolated); None: no calibration."""
        self.calibration = None if x is None else Calibration(x, y)

    def set_probability(self, ent: Span, probability: float) -> None:
        # Clipped: the beam's probabilities can sum to a hair over 1 in floating point.
        ent._.raw_confidence = min(1.0, probability)
        ent._.confidence = self.calibration(ent._.raw_confidence) if self.calibration else ent._.raw_confidence

    def pipe(self, docs: Iterable[Doc], batch_size: int = 32) -> Iterator[Doc]:
        for batch in minibatch(docs, size=batch_size):
            self.set_confidence(batch)
            yield from batch

    def step_model(self, docs: List[Doc], tokvecs) -> ParserStepModel:
        """The NER's step model over DOCS, reading the token vectors TOKVECS."""
        ner = self.nlp.get_pipe(self.ner_name)
        _, lower, upper = ner.model.layers
        return ParserStepModel(docs, [precomputed(tokvecs), lower, upper], has_upper=ner.model.attrs["has_upper"],
                               unseen_classes=ner.model.attrs["unseen_classes"], train=False)

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

    def beam_marginals(self, docs: List[Doc], segments: List[Segment], tokvecs,
                       offsets: numpy.ndarray) -> List[Dict[Tuple[int, int, str], float]]:
        """The beam's probability of each (start, end, label) entity, per segment."""
        ner = self.nlp.get_pipe(self.ner_name)
        xp = ner.model.ops.xp
        segment_tokvecs = xp.concatenate([tokvecs[offsets[i] + start:offsets[i] + end] for i, start, end in segments])
        # New Docs without entities: the NER would follow the entities already set on a Doc. (Span.as_doc
        # would copy the entities, and costs as much as its whole Doc.)
        segment_docs = [Doc(docs[i].vocab, words=[t.text for t in docs[i][start:end]],
                            spaces=[bool(t.whitespace_) for t in docs[i][start:end]]) for i, start, end in segments]
        step_model = self.step_model(segment_docs, segment_tokvecs)
        batch = BeamBatch(ner.moves, ner.moves.init_batch(segment_docs), None, self.beam_width,
                          density=self.beam_density)
        while not batch.is_done:
            states = batch.get_unfinished_states()
            if not states:
                break
            scores = ner.model.ops.to_numpy(step_model.predict(states)).astype("float32")
            log_z = numpy.logaddexp.reduce(scores, axis=1, keepdims=True)
            batch.advance(numpy.ascontiguousarray(scores - log_z))
        step_model.clear_memory()
        marginals = []
        for beam in batch:
            probs: Dict[Tuple[int, int, str], float] = defaultdict(float)
            for prob, parse in ner.moves.get_beam_parses(beam):
                for start, end, label in parse:
                    probs[(start, end, label)] += prob
            marginals.append(probs)
        return marginals

    def set_confidence(self, docs: List[Doc]) -> None:
        with_ents = [(doc, doc.ents) for doc in docs if doc.ents]  # doc.ents builds its Spans anew: once
        if not with_ents:
            return
        docs = [doc for doc, _ in with_ents]
        ents_per_doc = [ents for _, ents in with_ents]
        segments = [(i, start, end) for i, (doc, ents) in enumerate(with_ents)
                    for start, end in entity_segments(ents, len(doc), self.context, self.max_segment)]
        tokvecs = self.nlp.get_pipe(self.ner_name).model.get_ref("tok2vec").predict(docs)  # Doc after Doc
        offsets = numpy.cumsum([0] + [len(doc) for doc in docs])
        log_probs = self.greedy_log_probs(docs, ents_per_doc, tokvecs)
        path_probs = [float(numpy.exp(log_probs[offsets[i] + start:offsets[i] + end].sum()))
                      for i, start, end in segments]
        # Where the greedy analysis of a segment is itself that probable, every entity on it has a
        # beam probability between path_prob and 1: the beam is not run there.
        unsure = [n for n, path_prob in enumerate(path_probs) if path_prob < self.sure]
        marginals = dict(zip(unsure, self.beam_marginals(docs, [segments[n] for n in unsure], tokvecs, offsets)
                             if unsure else []))
        # Segments and entities both come in order: walk them together.
        segment_no = 0
        for i, ents in enumerate(ents_per_doc):
            for ent in ents:
                while not (segments[segment_no][0] == i and segments[segment_no][2] >= ent.end):
                    segment_no += 1
                if segment_no not in marginals:
                    self.set_probability(ent, path_probs[segment_no])
                    continue
                start = segments[segment_no][1]
                self.set_probability(ent, marginals[segment_no].get((ent.start - start, ent.end - start, ent.label_), 0.0))


@Language.factory(
    "entity_confidence",
    default_config={"ner_name": "ner", "beam_width": 8, "beam_density": 0.0001, "context": 8, "max_segment": 128,
                    "sure": 0.999},
)
def make_entity_confidence(
    nlp: Language, name: str, ner_name: str, beam_width: int, beam_density: float, context: int, max_segment: int,
    sure: float,
) -> EntityConfidence:
    return EntityConfidence(nlp, name, ner_name, beam_width, beam_density, context, max_segment, sure)
