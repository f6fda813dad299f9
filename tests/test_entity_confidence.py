"""The entity confidence is the NER's own probability of the entity: checked against spaCy's own
parser states, driven one transition at a time along the NER's greedy analysis."""

import numpy
from spacy.tokens import Doc
from spacy.training.iob_utils import doc_to_biluo_tags

TEXTS = [
    "Bill Gates was the CEO of Microsoft in Seattle , Washington .",
    "Angela Merkel met Reuters in London on Monday , and flew to Berlin .",
]


def state_log_probs(nlp, doc) -> numpy.ndarray:
    """log P of each token's greedy action, from ParserStepModel.predict on the parser's real states."""
    ner, confidence = nlp.get_pipe("ner"), nlp.get_pipe("entity_confidence")
    # A Doc without entities: the NER's states would follow the entities already set on one.
    fresh = Doc(doc.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])
    step_model = confidence.step_model([fresh], ner.model.get_ref("tok2vec").predict([doc]))
    state = ner.moves.init_batch([fresh])[0]
    class_index = {ner.moves.get_class_name(i): i for i in range(ner.moves.n_moves)}
    log_probs = []
    for action in doc_to_biluo_tags(doc):
        scores = ner.model.ops.to_numpy(step_model.predict([state]))[0].astype("float64")
        log_probs.append(scores[class_index[action]] - numpy.logaddexp.reduce(scores))
        ner.moves.apply_transition(state, action)
    assert state.is_final()
    return numpy.array(log_probs)


def test_confidence_is_the_ners_probability_of_the_entity_and_its_boundaries(nlp):
    confidence = nlp.get_pipe("entity_confidence")
    docs = [doc for doc in nlp.pipe(TEXTS) if doc.ents]
    assert docs, "the tiny model finds no entity in the sample sentences"
    for doc in docs:
        expected = state_log_probs(nlp, doc)
        tokvecs = nlp.get_pipe("ner").model.get_ref("tok2vec").predict([doc])
        numpy.testing.assert_allclose(confidence.greedy_log_probs([doc], [doc.ents], tokvecs), expected, atol=1e-4)
        for ent in doc.ents:
            start, end = max(0, ent.start - 1), min(len(doc), ent.end + 1)
            assert abs(ent._.raw_confidence - numpy.exp(expected[start:end].sum())) < 1e-4
            assert 0.0 < ent._.raw_confidence <= 1.0
            assert ent._.confidence == confidence.calibration(ent._.raw_confidence)


def confidences(docs):
    return [[(ent.start, ent.end, ent._.raw_confidence, ent._.confidence) for ent in doc.ents] for doc in docs]


def test_the_ners_own_token_vectors_give_the_confidences_of_token_vectors_computed_anew(nlp):
    confidence = nlp.get_pipe("entity_confidence")
    with nlp.select_pipes(disable=["entity_confidence"]):
        docs = list(nlp.pipe(TEXTS * 3))
    assert any(doc.ents for doc in docs)
    assert len(confidence.ner_token_vectors) == len(docs), "the NER's token vectors are kept per Doc"
    confidence.set_confidence(docs)
    assert len(confidence.ner_token_vectors) == 0, "entity_confidence leaves no token vectors behind"
    from_ner = confidences(docs)
    confidence.set_confidence(docs)  # the NER did not just run on them: computed anew
    for ours, anew in zip(from_ner, confidences(docs)):
        assert [ent[:2] for ent in ours] == [ent[:2] for ent in anew]
        numpy.testing.assert_allclose([ent[2:] for ent in ours], [ent[2:] for ent in anew], rtol=1e-5)
