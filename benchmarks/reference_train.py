"""The reference method, for the benchmark: the notebook this project replaces, which fine-tunes with
the Hugging Face `Trainer` (AutoModelForTokenClassification, one example per sentence, sub-word
label alignment: the word's label on its first piece, B- turned into I- on the continuation
pieces, -100 on the special tokens; lr 2e-5, 3 epochs, batch 8, weight decay 0.01).

It trains on the same sentences as ours (read from our DocBin files), times `trainer.train()`, and
scores dev after every epoch and test at the end with word-level seqeval (each word gets the label
of its first piece), as our seqeval scorer does. Writes the scores, the time and the dev F1 curve
to a JSON file, and the trained model (with its tokenizer) to a directory, so that the speed
benchmark runs the HF pipeline on a model that predicts real entities.
"""

import json
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Tuple

import spacy
import torch
import typer
from spacy.tokens import DocBin

from model_code.seqeval_scorer import seqeval_scores
from scripts.project_util import atomic_write_text, iob2_tags

app = typer.Typer(add_completion=False)
Sentence = Tuple[List[str], List[str]]  # words, IOB2 tags


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


def read_sentences(path: Path) -> List[Sentence]:
    """One (words, IOB2 tags) pair per sentence of the gold Docs."""
    sentences = []
    for doc in DocBin().from_disk(path).get_docs(spacy.blank("en").vocab):
        for sent in doc.sents:
            tags = [f"{t.ent_iob_}-{t.ent_type_}" if t.ent_iob_ in ("B", "I") else "O" for t in sent]
            sentences.append(([t.text for t in sent], tags))
    return sentences


def tag_names(sentences: List[Sentence]) -> List[str]:
    """The head's IOB2 tags, for the entity types of the training sentences."""
    return iob2_tags(sorted({tag[2:] for _, tags in sentences for tag in tags if tag != "O"}))


def encode(tokenizer, sentences: List[Sentence], label_ids: Dict[str, int]) -> List[Dict[str, Any]]:
    """Tokenized sentences with the notebook's label alignment."""
    examples = []
    for words, tags in sentences:
        encoding = tokenizer(words, is_split_into_words=True, truncation=True)
        labels, previous = [], None
        for word_id in encoding.word_ids():
            if word_id is None:
                labels.append(-100)
            elif word_id != previous:
                labels.append(label_ids[tags[word_id]])
            else:
                labels.append(label_ids[tags[word_id].replace("B-", "I-")])
            previous = word_id
        examples.append({**encoding, "labels": labels})
    return examples


def predict_tags(model, tokenizer, sentences: List[Sentence], batch_size: int = 32) -> List[List[str]]:
    """IOB2 tags per word: the label of the word's first piece."""
    id2label = model.config.id2label
    model.eval()
    predicted = []
    with torch.inference_mode():
        for i in range(0, len(sentences), batch_size):
            words = [w for w, _ in sentences[i : i + batch_size]]
            encoding = tokenizer(words, is_split_into_words=True, truncation=True, padding=True, return_tensors="pt")
            # The class's forward, not the instance's: the Trainer's bf16 mode leaves an autocast wrapper on
            # the instance, and the scores are of the weights in fp32, as they are saved and as ours are scored.
            label_ids = type(model).forward(model, **encoding).logits.argmax(-1).tolist()
            for row, sentence_words in enumerate(words):
                tags = ["O"] * len(sentence_words)
                seen = set()
                for position, word_id in enumerate(encoding.word_ids(row)):
                    if word_id is not None and word_id not in seen:
                        seen.add(word_id)
                        tags[word_id] = id2label[label_ids[row][position]]
                predicted.append(tags)
    return predicted


def score(model, tokenizer, sentences: List[Sentence]) -> Dict[str, Any]:
    # seqeval reads the tags as IOB2, as it does ours; an I- after O opens an entity there too.
    return seqeval_scores([tags for _, tags in sentences], predict_tags(model, tokenizer, sentences))


@app.command()
def main(
    train_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training DocBin"),
    dev_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Dev DocBin"),
    test_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Test DocBin"),
    backbone: str = typer.Argument(..., help="HF model directory (or hub name)"),
    output_path: Path = typer.Option(..., "--output", "-o", help="JSON with the scores, time and dev curve"),
    model_dir: Path = typer.Option(..., "--model-dir", help="Where the trained HF model goes"),
    epochs: float = typer.Option(3, help="Training epochs (the notebook: 3)"),
    seed: int = typer.Option(0, help="Random seed"),
    precision: Precision = typer.Option(
        Precision.fp32,
        help="fp32 (the notebook's), or bf16: the Trainer's "
        "bf16 autocast (`TrainingArguments(bf16=True)`), as a user tuning it for "
        "a CPU with AMX or AVX512-BF16 would run it",
    ),
):
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(backbone)
    train, dev, test = (read_sentences(path) for path in (train_path, dev_path, test_path))
    labels = tag_names(train)
    label_ids = {label: i for i, label in enumerate(labels)}
    model = AutoModelForTokenClassification.from_pretrained(
        backbone, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_ids
    )
    curve: List[Dict[str, float]] = []

    class DevCurve(TrainerCallback):
        """Dev seqeval F1 after each epoch, against the training's wall time (scoring excluded)."""

        start = scoring = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            f1 = score(kwargs["model"], tokenizer, dev)["seqeval_f"]
            kwargs["model"].train()
            curve.append(
                {
                    "epoch": state.epoch,
                    "step": state.global_step,
                    "seconds": round(now - self.start - self.scoring, 1),
                    "dev_f1": f1,
                }
            )
            self.scoring += time.perf_counter() - now

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="reference-trainer-"),
        learning_rate=2e-5,
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        weight_decay=0.01,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="epoch",
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=precision == Precision.bf16,
    )
    callback = DevCurve()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encode(tokenizer, train, label_ids),
        data_collator=DataCollatorForTokenClassification(tokenizer),
        callbacks=[callback],
    )
    start = time.perf_counter()
    trainer.train()
    # The dev scoring after each epoch is this benchmark's, not the notebook's: it is not counted.
    train_seconds = time.perf_counter() - start - callback.scoring
    test_scores = score(model, tokenizer, test)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    result = {
        "train_seconds": round(train_seconds, 1),
        "epochs": epochs,
        "precision": precision.value,
        "train_sentences": len(train),
        "dev_f1": curve[-1]["dev_f1"],
        "test_f1": test_scores["seqeval_f"],
        "test_p": test_scores["seqeval_p"],
        "test_r": test_scores["seqeval_r"],
        "test_per_type": test_scores["seqeval_per_type"],
        "dev_curve": curve,
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_text(output_path, json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps({k: v for k, v in result.items() if k != "dev_curve"}, indent=2))


if __name__ == "__main__":
    app()
