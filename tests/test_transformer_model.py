import random
import shutil
from pathlib import Path

import numpy
import pytest
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
    # bf16 keeps 8 bits of mantissa: close to fp32, yet not equal (so bf16 did run).
    assert numpy.abs(bf16_out - fp32_out).max() < 0.1 * numpy.abs(fp32_out).max()
    assert not numpy.array_equal(bf16_out, fp32_out)
    assert [(e.start, e.end, e.label_) for e in bf16_doc.ents] == [(e.start, e.end, e.label_) for e in fp32_doc.ents]


def test_bf16_inference_runs_on_a_bf16_copy_of_the_current_weights(project, nlp):
    import copy

    import torch

    model = load(project, True)
    hf_model = model.get_pipe("transformer").model.layers[0].shims[0]._model
    text = " ".join(w for w, _ in make_sentence(random.Random(8)))

    def bf16_copy_output(doc):
        wordpieces = doc._.trf_data.wordpieces
        bf16_model = copy.deepcopy(hf_model).to(torch.bfloat16).eval()
        with torch.no_grad():
            output = bf16_model(
                input_ids=torch.as_tensor(wordpieces.input_ids),
                attention_mask=torch.as_tensor(wordpieces.attention_mask),
            )
        return output.last_hidden_state.float().numpy()

    doc = model(text)
    assert numpy.array_equal(doc._.trf_data.model_output.last_hidden_state, bf16_copy_output(doc))
    # The stored weights stay fp32; a change to them is seen by the next call (nothing stale is kept).
    assert all(p.dtype == torch.float32 for p in hf_model.parameters())
    with torch.no_grad():
        hf_model.transformer.layer[0].ffn.lin1.weight.mul_(1.5)
    changed = model(text)
    assert not numpy.array_equal(
        changed._.trf_data.model_output.last_hidden_state, doc._.trf_data.model_output.last_hidden_state
    )
    assert numpy.array_equal(changed._.trf_data.model_output.last_hidden_state, bf16_copy_output(changed))
    assert hf_model.training  # left in training mode, as thinc's shim leaves it


def test_bf16_training_step_updates_the_transformer(project, nlp):
    model = load(project, True)
    rng = random.Random(9)
    examples = []
    for _ in range(4):
        sentence = make_sentence(rng)
        words = [w for w, _ in sentence]
        examples.append(
            Example.from_dict(model.make_doc(" ".join(words)), {"words": words, "entities": [t for _, t in sentence]})
        )
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


def test_groups_by_length_cut_the_longest_rows_first():
    from model_code.length_groups import groups_by_length

    groups = groups_by_length([5, 9, 3, 9], max_padded=18)
    assert [list(group) for group in groups] == [[1, 3], [0, 2]]
    # A row longer than the budget is a group of its own.
    assert [list(group) for group in groups_by_length([30, 2], max_padded=18)] == [[0], [1]]


def record_group_sizes(monkeypatch, cutter: str) -> list:
    """Wrap length_groups' CUTTER (groups_by_length or groups_by_fill) so that the sizes of
    the groups it cuts are recorded in the returned list."""
    from model_code import length_groups

    cut = getattr(length_groups, cutter)
    sizes = []

    def recording_cut(*args):
        groups = cut(*args)
        sizes.extend(len(group) for group in groups)
        return groups

    monkeypatch.setattr(length_groups, cutter, recording_cut)
    return sizes


def test_inference_by_length_gives_the_one_batch_outputs(project, nlp, monkeypatch):
    group_sizes = record_group_sizes(monkeypatch, "groups_by_length")
    rng = random.Random(11)
    # Documents of 1 to 12 sentences: windows of many lengths, several windows in the long ones.
    texts = [" ".join(w for _ in range(n) for w, _ in make_sentence(rng)) for n in (1, 12, 3, 7, 2, 12)]
    one_batch = spacy.load(
        project / "training" / "model-best", config={"components.transformer.model.predict_wordpieces": 0}
    )
    # A budget of 64 padded wordpieces: every batch is cut into several groups.
    grouped = spacy.load(
        project / "training" / "model-best", config={"components.transformer.model.predict_wordpieces": 64}
    )
    grouped_docs = list(grouped.pipe(texts))
    for a, b in zip(one_batch.pipe(texts), grouped_docs):
        mask = a._.trf_data.wordpieces.attention_mask.astype(bool)
        a_out, b_out = a._.trf_data.model_output.last_hidden_state, b._.trf_data.model_output.last_hidden_state
        assert a_out.shape == b_out.shape
        assert numpy.allclose(a_out[mask], b_out[mask], atol=1e-5)
        assert [(e.start, e.end, e.label_) for e in a.ents] == [(e.start, e.end, e.label_) for e in b.ents]
    # Only the grouped model cut its batch, into several groups that hold each window once.
    assert len(group_sizes) > 1
    assert sum(group_sizes) == sum(len(doc._.trf_data.wordpieces.lengths) for doc in grouped_docs)


def test_groups_by_fill_cut_where_a_row_is_much_shorter_than_its_groups_longest():
    from model_code.length_groups import groups_by_fill

    groups = groups_by_fill([100, 30, 128, 90, 60, 5], fill=0.7)
    assert [list(group) for group in groups] == [[2, 0, 3], [4], [1], [5]]
    assert [list(group) for group in groups_by_fill([4, 4], fill=0.7)] == [[0, 1]]


def test_training_by_length_gives_the_one_batch_outputs_and_gradients(project, nlp, monkeypatch):
    import torch
    from transformers.utils import ModelOutput

    from model_code import length_groups, precision

    group_sizes = record_group_sizes(monkeypatch, "groups_by_fill")
    model = spacy.load(project / "training" / "model-best")
    transformer = model.get_pipe("transformer").model
    rng = random.Random(13)
    texts = [" ".join(w for _ in range(n) for w, _ in make_sentence(rng)) for n in (1, 12, 3, 7, 2, 12)]
    wordpieces = transformer.predict([model.make_doc(text) for text in texts]).wordpieces
    layer = transformer.layers[0]
    hf_model = layer.shims[0]._model
    # No dropout, so that both ways compute the same function: the shim's train() is kept from
    # leaving eval mode (which changes nothing else for DistilBERT).
    hf_model.eval()
    monkeypatch.setattr(hf_model, "train", lambda mode=True: hf_model)
    mask = torch.as_tensor(wordpieces.attention_mask).bool()
    # The gradient from the layers that follow is zero on padding, as the alignment leaves it.
    gradient = torch.randn(*mask.shape, hf_model.config.dim, generator=torch.Generator().manual_seed(0))
    gradient *= mask[..., None]

    def train_step(train_fill):
        hf_model.zero_grad(set_to_none=True)
        forward = length_groups.by_length(precision.cpu_precision(False), 0, train_fill)
        output, backprop = forward(layer, wordpieces, True)
        d_output = ModelOutput()
        d_output["output_0"] = gradient
        backprop(d_output)
        grads = {name: p.grad.clone() for name, p in hf_model.named_parameters() if p.grad is not None}
        return output["last_hidden_state"][mask].detach(), grads

    one_output, one_grads = train_step(0.0)
    assert group_sizes == []
    grouped_output, grouped_grads = train_step(0.7)
    assert len(group_sizes) > 1 and sum(group_sizes) == len(wordpieces.lengths)
    assert torch.allclose(one_output, grouped_output, atol=1e-5)
    assert one_grads.keys() == grouped_grads.keys() == dict(hf_model.named_parameters()).keys()
    for name, one in one_grads.items():
        # Sums of float32 terms in another order: the rounding scales with the gradient's size. The
        # key biases' gradient is zero up to rounding (softmax ignores a shift), hence the floor.
        difference = (one - grouped_grads[name]).abs().max()
        assert difference <= 1e-4 * one.abs().max() + 1e-6, f"{name}: {difference} apart, largest {one.abs().max()}"


def test_fused_adam_takes_thincs_adamw_step(project, nlp):
    import torch
    from thinc.api import Adam, RAdam

    from model_code.fused_adam import uses_fused_adam

    transformer = spacy.load(project / "training" / "model-best").get_pipe("transformer").model
    shim = transformer.layers[0].shims[0]
    assert "fused_finish_update" in shim.finish_update.__qualname__  # the config's fused_adam = true

    def thinc_finish_update(optimizer):
        type(shim).finish_update(shim, optimizer)

    assert uses_fused_adam(Adam(use_averages=True)) and not uses_fused_adam(RAdam(1e-3))
    params = dict(shim._model.named_parameters())
    start = {name: p.detach().clone() for name, p in params.items()}
    generator = torch.Generator().manual_seed(0)
    # Some gradients over the clipping norm (1.0), some under it, so both branches are taken.
    gradients = [
        {
            name: torch.randn(p.shape, generator=generator) * (0.01 if i % 2 else 1.0)
            for i, (name, p) in enumerate(params.items())
        }
        for _ in range(3)
    ]
    assert any(g.norm() < 1 for g in gradients[0].values()) and any(g.norm() > 1 for g in gradients[0].values())

    def train(finish_update):
        optimizer = Adam(
            learn_rate=[3e-3, 2e-3, 1e-3], L2=0.01, L2_is_weight_decay=True, grad_clip=1.0, use_averages=False
        )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(start[name])
        for step in gradients:
            for name, p in params.items():
                p.grad = step[name].clone()
            finish_update(optimizer)
            optimizer.step_schedules()
            assert all(p.grad.abs().max() == 0 for p in params.values())
        return {name: p.detach().clone() for name, p in params.items()}, optimizer

    thinc_params, thinc_optimizer = train(thinc_finish_update)
    fused_params, fused_optimizer = train(shim.finish_update)
    for name, p in thinc_params.items():
        assert not torch.equal(p, start[name]), name
        assert torch.allclose(fused_params[name], p, rtol=1e-5, atol=1e-7), name
    assert fused_optimizer.nr_update == thinc_optimizer.nr_update
    for key, moment in thinc_optimizer.mom2.items():
        # The first moment sums gradients of both signs: where they cancel, the rounding of the
        # clipping scales is relatively large, so the bound scales with the largest moment.
        mom1 = thinc_optimizer.mom1[key]
        assert numpy.allclose(fused_optimizer.mom1[key], mom1, rtol=1e-5, atol=1e-6 * numpy.abs(mom1).max()), key
        # thinc's kernel rounds 1 - beta2 to float32 (0.00099998713): 1.3e-5 apart, relatively.
        assert numpy.allclose(fused_optimizer.mom2[key], moment, rtol=3e-5, atol=1e-12), key


def test_use_averages_averages_the_transformer_too(project, nlp):
    """spaCy evaluates and saves within nlp.use_params(optimizer.averages): with use_averages the
    transformer's weights there are the moving average of its weights after each update (thinc's
    rule, from the first update's weights), the NER's are thinc's own, and both come back after."""
    import torch
    from thinc.api import Adam

    model = load(project, False)
    shim = model.get_pipe("transformer").model.layers[0].shims[0]
    params = dict(shim._model.named_parameters())
    optimizer = Adam(learn_rate=1e-3, L2=0.01, L2_is_weight_decay=True, grad_clip=1.0, use_averages=True)
    generator = torch.Generator().manual_seed(1)
    expected = None
    for step in range(1, 4):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=generator)
        shim.finish_update(optimizer)
        weights = {name: p.detach().clone() for name, p in params.items()}
        if expected is None:
            expected = weights
        else:
            decay = (1.0 + step) / (10.0 + step)
            expected = {name: decay * expected[name] + (1 - decay) * w for name, w in weights.items()}
    ner = model.get_pipe("ner").model
    ner_param = next((node, name) for node in ner.walk() for name in node.param_names if node.has_param(name))
    ner_key = (ner_param[0].id, ner_param[1])
    optimizer.averages[ner_key] = ner_param[0].get_param(ner_param[1]) + 1.0
    with model.use_params(optimizer.averages):
        for name, p in params.items():
            assert torch.allclose(p, expected[name], rtol=1e-5, atol=1e-6), name
            assert not torch.equal(p, weights[name]), name
        assert numpy.array_equal(ner_param[0].get_param(ner_param[1]), optimizer.averages[ner_key])
    for name, p in params.items():
        assert torch.equal(p, weights[name]), name


def array_and_token_pipelines(project):
    """The same trained pipeline twice: the transformer's batches from arrays, and as
    spacy-transformers builds them from Token objects."""
    return [
        spacy.load(project / "training" / "model-best", config={"components.transformer.model.array_alignment": on})
        for on in (True, False)
    ]


def awkward_texts():
    rng = random.Random(11)
    sentences = [" ".join(w for w, _ in make_sentence(rng)) for _ in range(60)]
    return [
        sentences[0],
        "",  # an empty Doc: no windows
        "   ",  # whitespace only: one whitespace token, no wordpieces
        "Bill  Gates\n\n visited   Microsoft \t in Seattle .\n",  # whitespace tokens between words
        " ".join(sentences),  # far longer than one 128-token window
        "Ünïcödé naïve café — “Angela Merkel” met 東京 officials ; 100,000.5 % fans !",
        "Microsoft's CEO didn't say",  # tokens that split inside words and wordpieces across tokens
        "x[SEP]y and [CLS] (Hello), world!!! U.S.-based e-mail: bill@microsoft.com",  # special tokens in the text
        "Seattle" * 20 + " \x00control\u200bzero-width\u00a0no-break",  # a word too long for WordPiece: [UNK]
        sentences[1] + " ",
    ]


def assert_same_batch(array_doc, token_doc):
    ours, theirs = array_doc._.trf_data, token_doc._.trf_data
    assert ours.wordpieces.strings == theirs.wordpieces.strings
    assert ours.wordpieces.lengths == theirs.wordpieces.lengths
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        a, b = getattr(ours.wordpieces, name), getattr(theirs.wordpieces, name)
        assert (a is None and b is None) or (numpy.array_equal(a, b) and a.dtype == b.dtype), name
    assert numpy.array_equal(ours.align.data, theirs.align.data)
    assert numpy.array_equal(ours.align.lengths, theirs.align.lengths)
    assert set(ours.model_output) == set(theirs.model_output)
    for key in theirs.model_output:
        assert numpy.array_equal(ours.model_output[key], theirs.model_output[key]), key


def test_array_batches_equal_spacy_transformers_batches(project, nlp):
    by_arrays, by_tokens = array_and_token_pipelines(project)
    texts = awkward_texts()
    array_docs, token_docs = list(by_arrays.pipe(texts, batch_size=3)), list(by_tokens.pipe(texts, batch_size=3))
    assert len(token_docs[4]._.trf_data.wordpieces.strings) > 1  # several windows
    assert any(length == 0 for length in token_docs[3]._.trf_data.align.lengths)  # a token without wordpieces
    for array_doc, token_doc in zip(array_docs, token_docs):
        assert_same_batch(array_doc, token_doc)
        assert [(e.start, e.end, e.label_, e._.confidence) for e in array_doc.ents] == [
            (e.start, e.end, e.label_, e._.confidence) for e in token_doc.ents
        ]
    assert any(doc.ents for doc in array_docs)


def test_overlapping_windows_give_each_token_one_vector_from_every_window_it_is_in(project, nlp):
    """With a stride below the window, a token in two windows is aligned to its wordpieces in both,
    and the NER reads one vector for it: the mean of them all (spacy-transformers' batches, from arrays)."""
    window, stride = 8, 5
    by_arrays, by_tokens = [
        spacy.load(
            project / "training" / "model-best",
            config={
                "components.transformer.model.get_spans.window": window,
                "components.transformer.model.get_spans.stride": stride,
                "components.transformer.model.array_alignment": on,
            },
        )
        for on in (True, False)
    ]
    text = awkward_texts()[4]
    doc = by_arrays(text)
    assert_same_batch(doc, by_tokens(text))
    trf_data = doc._.trf_data
    width = trf_data.wordpieces.input_ids.shape[1]
    hidden = trf_data.model_output.last_hidden_state
    starts = [stride * row for row in range(len(trf_data.wordpieces.strings))]
    assert starts[-1] + window >= len(doc) > starts[-1]
    # The parser's tok2vec is chain(our tok2vec, list2array, Linear): its first layer is what the config builds.
    vectors = by_arrays.get_pipe("ner").model.get_ref("tok2vec").layers[0].predict([doc])[0]
    assert vectors.shape[0] == len(doc)
    in_two = 0
    for i in range(len(doc)):
        pieces = trf_data.align[i].data.ravel()
        windows_in = {w for w, start in enumerate(starts) if start <= i < start + window}
        assert {int(row) for row in pieces // width} == windows_in, i
        in_two += len(windows_in) == 2
        expected = hidden.reshape(-1, hidden.shape[-1])[pieces].mean(axis=0)
        assert numpy.allclose(vectors[i, : hidden.shape[-1]], expected, atol=1e-5), i
    assert in_two >= 10


def test_doc_texts_are_the_docs_texts():
    from model_code.wordpiece_encoding import doc_texts

    blank = spacy.blank("en")
    docs = [blank(text) for text in awkward_texts()]  # empty, whitespace, unicode, trailing spaces
    assert doc_texts(docs) == [doc.text for doc in docs] == awkward_texts()


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("with_type_ids", [False, True])
@pytest.mark.parametrize("by_word", [True, False])
def test_tokenize_pads_as_huggingface_tokenize(tiny_transformer, padding_side, with_type_ids, by_word, monkeypatch):
    from spacy_transformers.data_classes import WordpieceBatch
    from spacy_transformers.layers.transformer_model import huggingface_tokenize
    from transformers import AutoTokenizer

    from model_code import array_batches, wordpiece_encoding

    tokenizer = AutoTokenizer.from_pretrained(tiny_transformer, padding_side=padding_side)
    if with_type_ids:  # DistilBERT takes none: ask for them, as a BERT tokenizer does
        tokenizer.model_input_names = [*tokenizer.model_input_names, "token_type_ids"]
    if not by_word:  # the spans' texts whole, as for a tokenizer that is not BERT's
        monkeypatch.setattr(wordpiece_encoding, "word_by_word", lambda backend: None)
    blank = spacy.blank("en")
    spans = [blank(text)[:] for text in awkward_texts() if text.strip()]  # windows of many lengths
    windows = array_batches.WindowTokens.of(spans, array_batches.doc_offsets(spans))
    ours, offsets = wordpiece_encoding.tokenize(tokenizer, spans, windows)
    encoding = huggingface_tokenize(tokenizer, [span.text for span in spans])
    theirs = WordpieceBatch.from_batch_encoding(encoding)
    assert ours.strings == theirs.strings and ours.lengths == theirs.lengths
    assert len(set(ours.lengths)) > 2  # rows of other lengths: padding on PADDING_SIDE
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None) == (name == "token_type_ids" and not with_type_ids), name
        assert a is None or (numpy.array_equal(a, b) and a.dtype == b.dtype), name
    assert numpy.array_equal(offsets, encoding["offset_mapping"])


@pytest.mark.parametrize("lowercase", [False, True])
def test_encoding_word_by_word_gives_the_windows_encodings(tiny_transformer, lowercase, monkeypatch):
    from spacy_transformers.span_getters import configure_strided_spans
    from transformers import AutoTokenizer

    from model_code import array_batches, wordpiece_encoding

    # Uncased: lowercased and accents stripped, so that wordpiece offsets and characters differ.
    tokenizer = AutoTokenizer.from_pretrained(tiny_transformer, do_lower_case=lowercase)
    backend = tokenizer.backend_tokenizer
    assert backend.normalizer.lowercase == lowercase
    encoded_words, encode_words = [], wordpiece_encoding.encode_words

    def recording_encode_words(backend, words):
        encoded_words.extend(words)
        return encode_words(backend, words)

    monkeypatch.setattr(wordpiece_encoding, "encode_words", recording_encode_words)
    monkeypatch.setattr(wordpiece_encoding, "WORDS_PER_TEXT", 7)  # words cut into several texts
    blank = spacy.blank("en")
    docs = [blank(text) for text in awkward_texts() * 2]
    # Short overlapping windows: some start or end inside a word ("did|n't").
    spans = [span for doc_spans in configure_strided_spans(3, 2)(docs) for span in doc_spans]
    specials = wordpiece_encoding.word_by_word(backend)
    windows = array_batches.WindowTokens.of(spans, array_batches.doc_offsets(spans))
    ours = wordpiece_encoding.encode_by_word(backend, spans, windows, specials)
    theirs = wordpiece_encoding.encode_windows(backend, spans)
    for name in ("sizes", "ids", "type_ids", "offsets"):
        assert numpy.array_equal(getattr(ours, name), getattr(theirs, name)), name
    assert any(span.text.startswith("n't") for span in spans)
    # Each distinct word once: far fewer than the windows' words.
    assert len(encoded_words) == len(set(encoded_words)) < sum(len(span.text.split()) for span in spans) / 2
    assert "didn't" in encoded_words and "Seattle" * 20 in encoded_words


def test_only_tokenizers_that_encode_word_by_word_are_encoded_so(tiny_transformer):
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import AutoTokenizer

    from model_code.wordpiece_encoding import word_by_word

    tokenizer = AutoTokenizer.from_pretrained(tiny_transformer)
    specials = word_by_word(tokenizer.backend_tokenizer)
    assert specials.before[0] == tokenizer.convert_tokens_to_ids(["[CLS]"])
    assert specials.after[0] == tokenizer.convert_tokens_to_ids(["[SEP]"])
    # GPT-2's byte-level words carry the space before them: a word's encoding depends on its place.
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert word_by_word(tokenizer.backend_tokenizer) is None
    # An added token that takes in the spaces before it: its encoding depends on the word before.
    tokenizer = AutoTokenizer.from_pretrained(tiny_transformer)
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken("<ent>", lstrip=True)]})
    assert word_by_word(tokenizer.backend_tokenizer) is None


def test_offset_alignment_maps_each_token_to_the_wordpieces_over_its_characters(nlp):
    from model_code.array_batches import WindowTokens, doc_offsets, offset_alignment

    doc = spacy.blank("en")("ab cd")
    spans = [doc[0:2]]
    # [CLS] "a" "b" " cd" (covering the space and the next token) [SEP] padding
    offset_mapping = numpy.array([[[0, 0], [0, 1], [1, 2], [2, 5], [0, 0], [0, 0]]])
    windows = WindowTokens.of(spans, doc_offsets(spans))
    align = offset_alignment(windows, offset_mapping)
    # A token covers the character after it too: the space after "ab" takes " cd" into "ab".
    assert align.lengths.tolist() == [3, 1] and align.data.ravel().tolist() == [1, 2, 3, 3]
    # Offsets that go back (" cd" first): each token's wordpieces still come sorted, once each.
    backwards = numpy.array([[[0, 0], [2, 5], [0, 1], [1, 2], [0, 0], [0, 0]]])
    align = offset_alignment(windows, backwards)
    assert align.lengths.tolist() == [3, 1] and align.data.ravel().tolist() == [1, 2, 3, 1]


def test_array_training_batches_give_spacy_transformers_gradients(project, nlp):
    import torch

    texts = awkward_texts()
    gradients, outputs = [], []
    for pipeline in array_and_token_pipelines(project):
        docs = [pipeline.make_doc(text) for text in texts]
        model = pipeline.get_pipe("transformer").model
        torch.manual_seed(0)  # the same dropout on both sides
        batch, backprop = model.begin_update(docs)
        outputs.append(batch.doc_data)
        rng = numpy.random.default_rng(0)
        d_outputs = [
            [rng.standard_normal(data.model_output.last_hidden_state.shape).astype("float32")]
            if data.model_output
            else []
            for data in batch.doc_data
        ]
        backprop(batch.unsplit_by_doc([d for d in d_outputs if d]))
        hf_model = model.layers[0].shims[0]._model
        gradients.append({name: p.grad.clone() for name, p in hf_model.named_parameters() if p.grad is not None})
    for ours, theirs in zip(*outputs):
        assert numpy.array_equal(ours.align.data, theirs.align.data)
        assert numpy.array_equal(ours.wordpieces.input_ids, theirs.wordpieces.input_ids)
        for key in theirs.model_output:
            assert numpy.array_equal(ours.model_output[key], theirs.model_output[key]), key
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for name in gradients[1]:
        assert torch.equal(gradients[0][name], gradients[1][name]), name


def test_wordpiece_strings_are_the_tokenizers_and_follow_added_tokens(tiny_transformer):
    from transformers import AutoTokenizer

    from model_code.wordpiece_encoding import wordpiece_strings

    tokenizer = AutoTokenizer.from_pretrained(tiny_transformer)
    input_ids = numpy.array(tokenizer(["Bill Gates visited Seattle", "Microsoft"], padding="longest")["input_ids"])
    assert wordpiece_strings(tokenizer, input_ids) == [tokenizer.convert_ids_to_tokens(row) for row in input_ids]
    # A token added after the first call has an id past the table made then: the table is made anew.
    tokenizer.add_tokens(["Zyxwvut"])
    input_ids = numpy.array([tokenizer("Zyxwvut visited")["input_ids"]])
    strings = wordpiece_strings(tokenizer, input_ids)
    assert strings == [tokenizer.convert_ids_to_tokens(input_ids[0])] and "Zyxwvut" in strings[0]


def test_a_pipeline_saved_before_the_split_by_concern_still_loads(project, nlp, tiny_transformer, tmp_path):
    """tests/fixtures holds the config.cfg of the test pipeline as saved at main before transformer_model.py
    was split into a module per concern: with it, the release pipeline loads and finds the same entities."""
    saved = tmp_path / "model"
    shutil.copytree(project / "training" / "model-release", saved)
    config = (Path(__file__).parent / "fixtures" / "config-saved-before-the-split.cfg").read_text()
    (saved / "config.cfg").write_text(config.replace("TINY_TRANSFORMER", str(tiny_transformer)))
    text = "Bill Gates visited Microsoft in Seattle on Monday . Angela Merkel met Reuters in London ."
    before = spacy.load(saved)
    assert [(e.text, e.label_, e._.confidence) for e in before(text).ents] == [
        (e.text, e.label_, e._.confidence) for e in nlp(text).ents
    ]
