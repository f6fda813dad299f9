"""A confidence in [0, 1] for every entity: `ent._.confidence`.

The pipeline component "entity_confidence" runs after the NER. It keeps the NER's greedy
entities and scores each one by beam search over the NER's own transitions: the confidence
of an entity is the total probability of the beam's complete analyses that contain exactly
that span with that label. Each step's transition scores are turned into log-probabilities
with a softmax over all actions, the distribution the greedy NER was trained with (spaCy's
`cpu_log_loss`), so an analysis's probability is the product of its steps' probabilities.
(spaCy's own `beam_parse` sums raw scores, which makes a greedy model's beam almost always
sure of itself.) The beam reuses the transformer output already stored on the Doc, so it
costs NER steps only. Switch it off with
`spacy.load("en_conll_distilbert", exclude=["entity_confidence"])`; `ent._.confidence` is then None.

Bundled into the packaged model with `spacy package --code`: it imports only installed libraries.
"""
from collections import defaultdict
from typing import Dict, Iterable, Iterator, List, Tuple

import numpy
from spacy.language import Language
from spacy.pipeline._parser_internals._beam_utils import BeamBatch
from spacy.tokens import Doc, Span
from spacy.util import minibatch

if not Span.has_extension("confidence"):
    Span.set_extension("confidence", default=None)


class EntityConfidence:
    def __init__(self, nlp: Language, name: str, ner_name: str, beam_width: int, beam_density: float):
        self.nlp = nlp
        self.name = name
        self.ner_name = ner_name
        self.beam_width = beam_width
        self.beam_density = beam_density

    def __call__(self, doc: Doc) -> Doc:
        self.set_confidence([doc])
        return doc

    def pipe(self, docs: Iterable[Doc], batch_size: int = 32) -> Iterator[Doc]:
        for batch in minibatch(docs, size=batch_size):
            self.set_confidence(batch)
            yield from batch

    def entity_marginals(self, docs: List[Doc]) -> List[Dict[Tuple[int, int, str], float]]:
        ner = self.nlp.get_pipe(self.ner_name)
        beams = self.beam_parse(ner, docs)
        marginals = []
        for beam in beams:
            probs: Dict[Tuple[int, int, str], float] = defaultdict(float)
            for prob, parse in ner.moves.get_beam_parses(beam):
                for start, end, label in parse:
                    probs[(start, end, label)] += prob
            marginals.append(probs)
        return marginals

    def beam_parse(self, ner, docs: List[Doc]) -> List:
        """spaCy's Parser.beam_parse, with each step's scores normalised to log-probabilities."""
        batch = BeamBatch(ner.moves, ner.moves.init_batch(docs), None, self.beam_width, density=self.beam_density)
        step_model = ner.model.predict(docs)
        while not batch.is_done:
            states = batch.get_unfinished_states()
            if not states:
                break
            scores = ner.model.ops.to_numpy(step_model.predict(states)).astype("float32")
            log_z = numpy.logaddexp.reduce(scores, axis=1, keepdims=True)
            batch.advance(numpy.ascontiguousarray(scores - log_z))
        step_model.clear_memory()
        return list(batch)

    def set_confidence(self, docs: List[Doc]) -> None:
        docs_with_ents = [doc for doc in docs if doc.ents]
        if not docs_with_ents:
            return
        entities = [doc.ents for doc in docs_with_ents]
        # The NER follows entities already set on a Doc, so the beam searches on unannotated Docs.
        for doc in docs_with_ents:
            doc.set_ents([], default="missing")
        try:
            marginals = self.entity_marginals(docs_with_ents)
        finally:
            for doc, ents in zip(docs_with_ents, entities):
                doc.ents = ents
        for doc, probs in zip(docs_with_ents, marginals):
            for ent in doc.ents:
                # Clipped: the beam's probabilities can sum to a hair over 1 in floating point.
                ent._.confidence = min(1.0, probs.get((ent.start, ent.end, ent.label_), 0.0))


@Language.factory(
    "entity_confidence",
    default_config={"ner_name": "ner", "beam_width": 8, "beam_density": 0.0001},
)
def make_entity_confidence(
    nlp: Language, name: str, ner_name: str, beam_width: int, beam_density: float
) -> EntityConfidence:
    return EntityConfidence(nlp, name, ner_name, beam_width, beam_density)
