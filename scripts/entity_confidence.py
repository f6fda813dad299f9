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

Switch it off with `spacy.load("en_conll_distilbert", exclude=["entity_confidence"])`;
`ent._.confidence` is then None.

Bundled into the packaged model with `spacy package --code`: it imports only installed libraries.
"""
from collections import defaultdict
from typing import Dict, Iterable, Iterator, List, Tuple

import numpy
from spacy.language import Language
from spacy.ml.parser_model import ParserStepModel
from spacy.pipeline._parser_internals._beam_utils import BeamBatch
from spacy.tokens import Doc, Span
from spacy.util import minibatch
from thinc.api import Model

if not Span.has_extension("confidence"):
    Span.set_extension("confidence", default=None)

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


class EntityConfidence:
    def __init__(self, nlp: Language, name: str, ner_name: str, beam_width: int, beam_density: float,
                 context: int, max_segment: int):
        self.nlp = nlp
        self.name = name
        self.ner_name = ner_name
        self.beam_width = beam_width
        self.beam_density = beam_density
        self.context = context
        self.max_segment = max_segment

    def __call__(self, doc: Doc) -> Doc:
        self.set_confidence([doc])
        return doc

    def pipe(self, docs: Iterable[Doc], batch_size: int = 32) -> Iterator[Doc]:
        for batch in minibatch(docs, size=batch_size):
            self.set_confidence(batch)
            yield from batch

    def segment_marginals(self, docs: List[Doc], segments: List[Segment]) -> List[Dict[Tuple[int, int, str], float]]:
        """The beam's probability of each (start, end, label) entity, per segment."""
        ner = self.nlp.get_pipe(self.ner_name)
        tok2vec, lower, upper = ner.model.layers
        tokvecs = tok2vec.predict(docs)  # one row per token of DOCS, Doc after Doc
        offsets = numpy.cumsum([0] + [len(doc) for doc in docs])
        xp = ner.model.ops.xp
        segment_tokvecs = xp.concatenate([tokvecs[offsets[i] + start:offsets[i] + end] for i, start, end in segments])
        # New Docs without entities: the NER would follow the entities already set on a Doc. (Span.as_doc
        # would copy the entities, and costs as much as its whole Doc.)
        segment_docs = [Doc(docs[i].vocab, words=[t.text for t in docs[i][start:end]],
                            spaces=[bool(t.whitespace_) for t in docs[i][start:end]]) for i, start, end in segments]
        step_model = ParserStepModel(segment_docs, [precomputed(segment_tokvecs), lower, upper],
                                     has_upper=ner.model.attrs["has_upper"],
                                     unseen_classes=ner.model.attrs["unseen_classes"], train=False)
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
        entities = {i: doc.ents for i, doc in enumerate(docs) if doc.ents}  # doc.ents builds its Spans anew
        docs = [docs[i] for i in entities]
        entities = list(entities.values())
        segments = [(i, start, end) for i, doc in enumerate(docs)
                    for start, end in entity_segments(entities[i], len(doc), self.context, self.max_segment)]
        if not segments:
            return
        marginals = self.segment_marginals(docs, segments)
        # Segments and entities both come in order: walk them together.
        segment_no = 0
        for i, ents in enumerate(entities):
            for ent in ents:
                while not (segments[segment_no][0] == i and segments[segment_no][2] >= ent.end):
                    segment_no += 1
                start = segments[segment_no][1]
                # Clipped: the beam's probabilities can sum to a hair over 1 in floating point.
                probs = marginals[segment_no]
                ent._.confidence = min(1.0, probs.get((ent.start - start, ent.end - start, ent.label_), 0.0))


@Language.factory(
    "entity_confidence",
    default_config={"ner_name": "ner", "beam_width": 8, "beam_density": 0.0001, "context": 8, "max_segment": 128},
)
def make_entity_confidence(
    nlp: Language, name: str, ner_name: str, beam_width: int, beam_density: float, context: int, max_segment: int
) -> EntityConfidence:
    return EntityConfidence(nlp, name, ner_name, beam_width, beam_density, context, max_segment)
