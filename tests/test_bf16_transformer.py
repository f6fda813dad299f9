import random

import numpy
import spacy
from conftest import make_sentence
from spacy.training import Example


def load(project, cpu_bf16: bool):
    return spacy.load(project / "training" / "model-best", config={"components.transformer.model.cpu_bf16": cpu_bf16})


def test_bf16_inference_matches_fp32(project, nlp):  # nlp: registers the pipeline's functions
    text = " ".join(w for w, _ in make_sentence(random.Random(7)))
    fp32_doc, bf16_doc = load(project, False)(text), load(project, True)(text)
    fp32_out = fp32_doc._.trf_data.model_output.last_hidden_state
    bf16_out = bf16_doc._.trf_data.model_output.last_hidden_state
    assert bf16_out.dtype == numpy.float32 and bf16_out.shape == fp32_out.shape
    # bf16 keeps 8 bits of mantissa: close to fp32, yet not equal (so the autocast did run).
    assert numpy.abs(bf16_out - fp32_out).max() < 0.1 * numpy.abs(fp32_out).max()
    assert not numpy.array_equal(bf16_out, fp32_out)
    assert [(e.start, e.end, e.label_) for e in bf16_doc.ents] == [(e.start, e.end, e.label_) for e in fp32_doc.ents]


def test_bf16_training_step_updates_the_transformer(project, nlp):
    model = load(project, True)
    rng = random.Random(9)
    examples = []
    for _ in range(4):
        sentence = make_sentence(rng)
        words = [w for w, _ in sentence]
        examples.append(Example.from_dict(model.make_doc(" ".join(words)), {"words": words,
                                                                             "entities": [t for _, t in sentence]}))
    hf_model = model.get_pipe("transformer").model.layers[0].shims[0]._model
    before = [p.detach().clone() for p in hf_model.parameters()]
    optimizer = model.resume_training()
    for _ in range(3):
        losses = model.update(examples, sgd=optimizer)
        optimizer.step_schedules()  # the warm-up starts at a learning rate of 0
    after = list(hf_model.parameters())
    assert numpy.isfinite(losses["transformer"]) and numpy.isfinite(losses["ner"])
    assert all(str(p.dtype) == "torch.float32" for p in after)
    assert any(not bool((b == a.detach()).all()) for b, a in zip(before, after))
