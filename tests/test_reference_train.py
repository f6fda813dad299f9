"""The reference method of the benchmark (benchmarks/reference_train.py): the notebook's sub-word label
alignment, and a training run that writes its scores and a model the HF pipeline can load."""

import json
import sys

import torch
from conftest import run_checked

from benchmarks.reference_train import encode, predict_tags, read_sentences, score, tag_names
from scripts.project_util import iob2_tags


def test_labels_are_aligned_as_the_notebook_does(tiny_transformer):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_transformer)
    words, tags = ["Seattleites", "Bill", "Gates"], ["B-LOC", "B-PER", "I-PER"]
    # "Seattleites" is not in the tiny vocabulary: it comes in pieces (how many depends on the vocabulary).
    pieces = len(tokenizer.tokenize("Seattleites"))
    assert pieces > 1 and tokenizer.tokenize("Bill Gates") == ["Bill", "Gates"]
    labels = tag_names([(words, tags)])
    assert labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    (example,) = encode(tokenizer, [(words, tags)], {label: i for i, label in enumerate(labels)})
    expected = ["B-LOC"] + ["I-LOC"] * (pieces - 1) + ["B-PER", "I-PER"]
    assert example["labels"] == [-100] + [labels.index(tag) for tag in expected] + [-100]


def test_scores_are_of_the_fp32_weights_after_bf16_training(tiny_transformer):
    from accelerate import Accelerator
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_transformer)
    model = AutoModelForTokenClassification.from_pretrained(tiny_transformer, num_labels=9)
    # What the Trainer does with bf16=True, and leaves in place after training: an autocast wrapper on forward.
    model = Accelerator(mixed_precision="bf16", cpu=True).prepare_model(model)
    autocast_in_classifier = []
    model.classifier.register_forward_hook(lambda *_: autocast_in_classifier.append(torch.is_autocast_enabled("cpu")))
    model(**tokenizer(["Bill Gates"], return_tensors="pt"))
    assert autocast_in_classifier == [True]
    predict_tags(model, tokenizer, [(["Bill", "Gates"], ["B-PER", "I-PER"])])
    assert autocast_in_classifier == [True, False]


def test_reference_trains_in_bf16_and_saves_the_model_it_scored(project, tiny_transformer, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    corpus = project / "corpus"
    output, model_dir = tmp_path / "reference.json", tmp_path / "reference-model"
    run_checked(
        [
            sys.executable,
            "-m",
            "benchmarks.reference_train",
            str(corpus / "train.spacy"),
            str(corpus / "dev.spacy"),
            str(corpus / "test.spacy"),
            str(tiny_transformer),
            "--output",
            str(output),
            "--model-dir",
            str(model_dir),
            "--epochs",
            "1",
            "--precision",
            "bf16",
        ],
        cwd=project,
    )
    result = json.loads(output.read_text())
    assert result["precision"] == "bf16" and result["epochs"] == 1
    assert result["train_sentences"] == 8 * 4
    assert [point["epoch"] for point in result["dev_curve"]] == [1.0]
    assert result["train_seconds"] > 0 and result["dev_f1"] == result["dev_curve"][-1]["dev_f1"]
    # The saved model is the one scored: its test F1 again, and the HF pipeline serves it.
    model = AutoModelForTokenClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The head's tags are the training data's types.
    assert model.config.id2label == dict(enumerate(iob2_tags(["LOC", "MISC", "ORG", "PER"])))
    assert score(model, tokenizer, read_sentences(corpus / "test.spacy"))["seqeval_f"] == result["test_f1"]
    assert score(model, tokenizer, read_sentences(corpus / "dev.spacy"))["seqeval_f"] == result["dev_f1"]
    groups = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple")(
        "Bill Gates visited Microsoft in Seattle ."
    )
    assert all(group["entity_group"] in {"PER", "ORG", "LOC", "MISC"} for group in groups)
