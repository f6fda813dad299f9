"""Inference speed, side by side in one process: our pipeline (`nlp.pipe`, whole pipeline) against
the Hugging Face token-classification pipeline (aggregation_strategy="simple", the reference
notebook's inference) on the same backbone and the same raw texts (the test split's documents).

On the CPU (`--gpu-id -1`) both sides run in fp32, and in bf16 where the CPU has AMX or AVX512-BF16
(elsewhere torch emulates bf16, far slower than fp32: it is not measured); on a GPU both run in fp32 and fp16,
each as its users would: ours with the config's switches (`cpu_bf16`, `mixed_precision`), the HF
pipeline with fp16 weights (`torch_dtype`) on a GPU, and on the CPU with either of its users' two bf16
switches: under `torch.autocast` (`hf_pipeline_bf16`) and with bf16 weights
(`torch_dtype=torch.bfloat16`, `hf_pipeline_bf16_weights`).
Each side runs with its own default batch size, as its users would call it: ours `nlp.pipe(texts)`
(the config's `[nlp] batch_size`, 128 Docs, which the transformer regroups by length), the HF
pipeline `ner(texts)` (one text a call: on these CPUs its fastest, as a batch is padded to its
longest text; 8, 32 and 128 were slower) unless `--hf-batch-size` is given.
Variants run alternately, repetition after repetition, and each reports the median words/s.
The HF model gets a randomly initialised classification head unless BACKBONE already has one: the
head does not change the speed.
`--token-objects` adds ours with spacy-transformers' own batching (`array_alignment = false`), the
"before" of that change's A/B; `--only` runs just the variants named.
"""

import json
import platform
import statistics
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import spacy
import torch
import typer
from spacy.language import Language
from spacy.tokens import DocBin

from scripts.project_util import (
    SetupError,
    atomic_write_text,
    cpu_has_native_bf16,
    import_code_paths,
    iob2_tags,
    one_line_errors,
    use_device,
)

app = typer.Typer(add_completion=False)
Runner = Callable[[List[str]], int]


def machine_info() -> Dict[str, object]:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "spacy": spacy.__version__,
    }


def spacy_runner(model: str, precision: str, confidence: bool, array_alignment: bool = True) -> Runner:
    overrides = {
        "components.transformer.model.cpu_bf16": precision == "bf16",
        "components.transformer.model.mixed_precision": precision == "fp16",
        "components.transformer.model.array_alignment": array_alignment,
    }
    nlp = spacy.load(model, config=overrides, exclude=[] if confidence else ["entity_confidence"])

    def run(texts: List[str]) -> int:
        return sum(len(doc.ents) for doc in nlp.pipe(texts))

    return run


def hf_pipeline(backbone: str, tags: List[str], precision: str, gpu_id: int):
    """The HF token-classification pipeline (aggregation_strategy="simple"): a trained model with its
    own head, or a backbone with a new head of TAGS."""
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, pipeline

    trained = "O" in AutoConfig.from_pretrained(backbone).id2label.values()
    head = (
        {}
        if trained
        else {
            "num_labels": len(tags),
            "id2label": dict(enumerate(tags)),
            "label2id": {tag: i for i, tag in enumerate(tags)},
        }
    )
    model = AutoModelForTokenClassification.from_pretrained(
        backbone,
        **head,
        torch_dtype={"fp16": torch.float16, "bf16_weights": torch.bfloat16}.get(precision, torch.float32),
    )
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    return pipeline(
        "token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple", device=gpu_id
    )


def hf_runner(backbone: str, tags: List[str], precision: str, gpu_id: int, batch_size: Optional[int]) -> Runner:
    ner = hf_pipeline(backbone, tags, precision, gpu_id)

    def run(texts: List[str]) -> int:
        with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
            return sum(len(entities) for entities in ner(texts, batch_size=batch_size))

    return run


def variants(
    model: str,
    backbone: str,
    tags: List[str],
    gpu_id: int,
    batch_size: Optional[int],
    texts: List[str],
    sentences: List[str],
    token_objects: bool = False,
    only: Sequence[str] = (),
) -> Dict[str, Tuple[Runner, List[str]]]:
    """Each variant's runner and inputs; with TOKEN_OBJECTS also ours with spacy-transformers' own
    batching (`array_alignment = false`), the before of an A/B; with ONLY just the variants named."""
    low = "fp16" if gpu_id >= 0 else "bf16"
    precisions = ["fp32", *([low] if gpu_id >= 0 or cpu_has_native_bf16() else [])]
    makers: Dict[str, Tuple[Callable[[], Runner], List[str]]] = {}
    for precision in precisions:
        makers[f"ours_{precision}"] = (partial(spacy_runner, model, precision, True), texts)
        makers[f"ours_{precision}_no_confidence"] = (partial(spacy_runner, model, precision, False), texts)
        if token_objects:
            makers[f"ours_{precision}_token_objects"] = (partial(spacy_runner, model, precision, True, False), texts)
        makers[f"hf_pipeline_{precision}"] = (partial(hf_runner, backbone, tags, precision, gpu_id, batch_size), texts)
    makers["hf_pipeline_fp32_sentences"] = (makers["hf_pipeline_fp32"][0], sentences)
    if low in precisions and gpu_id < 0:
        makers["hf_pipeline_bf16_weights"] = (
            partial(hf_runner, backbone, tags, "bf16_weights", gpu_id, batch_size),
            texts,
        )
    unknown = set(only) - set(makers)
    if unknown:
        raise SetupError(f"--only: no variant {', '.join(sorted(unknown))}; the variants: {', '.join(makers)}")
    built: Dict[Callable[[], Runner], Runner] = {}  # one HF fp32 pipeline serves texts and sentences
    runs = {}
    for name, (make, inputs) in makers.items():
        if not only or name in only:
            if make not in built:
                built[make] = make()
            runs[name] = (built[make], inputs)
    return runs


def component_seconds(nlp: Language, texts: List[str]) -> Dict[str, float]:
    """Where our fp32 time goes: the tokenizer, then each component over the Docs of the one before."""
    start = time.perf_counter()
    docs = [nlp.make_doc(text) for text in texts]
    seconds = {"tokenizer": time.perf_counter() - start}
    for name, component in nlp.pipeline:
        start = time.perf_counter()
        docs = list(component.pipe(docs, batch_size=nlp.batch_size))
        seconds[name] = time.perf_counter() - start
    return {name: round(value, 3) for name, value in seconds.items()}


def compute_limit(backbone: str, texts: List[str], gpu_id: int) -> Dict[str, float]:
    """How fast the backbone's forward pass over TEXTS could run at this machine's fp32 matrix
    throughput (measured): 2 FLOPs per weight of the layers' matrices, plus the attention over 128
    wordpieces, per wordpiece, without window overlap."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(backbone)
    hidden = getattr(config, "hidden_size", None) or config.dim
    ffn = getattr(config, "intermediate_size", None) or config.hidden_dim
    layers = getattr(config, "num_hidden_layers", None) or config.n_layers
    flop_per_wordpiece = 2 * layers * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * layers * 128 * hidden
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    wordpieces = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    device = f"cuda:{gpu_id}" if gpu_id >= 0 else "cpu"
    a = torch.randn(2048, 2048, device=device)
    a @ a  # warm-up
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < 2.0:
        a @ a
        runs += 1
    if gpu_id >= 0:
        torch.cuda.synchronize()
    flops = runs * 2 * 2048**3 / (time.perf_counter() - start)
    return {
        "fp32_gflops": round(flops / 1e9, 1),
        "wordpieces": wordpieces,
        "mflop_per_wordpiece": round(flop_per_wordpiece / 1e6, 2),
        "seconds_at_the_limit": round(wordpieces * flop_per_wordpiece / flops, 3),
    }


@app.command()
def main(
    model: str = typer.Argument(..., help="Our pipeline: directory or installed package"),
    data_path: Path = typer.Argument(..., exists=True, dir_okay=False, help="DocBin whose texts are annotated"),
    backbone: str = typer.Argument(..., help="HF model directory (or name) for the reference pipeline"),
    output_path: Path = typer.Option(..., "--output", "-o", help="JSON with words/s per variant"),
    repetitions: int = typer.Option(3, "--repetitions", "-r", help="Alternating runs per variant"),
    hf_batch_size: Optional[int] = typer.Option(
        None, "--hf-batch-size", help="The HF pipeline's batch size (default: its own, one text a call)"
    ),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id for both pipelines, or -1 for the CPU"),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files to import first"),
    token_objects: bool = typer.Option(
        False,
        "--token-objects",
        help="Also run ours with spacy-transformers' own "
        "batching (array_alignment = false): ours_<precision>_token_objects",
    ),
    only: str = typer.Option(
        "",
        help="Comma-separated variants to run (default: all), e.g. ours_fp32,ours_fp32_token_objects,hf_pipeline_fp32",
    ),
):
    import_code_paths(code_paths)
    with one_line_errors():
        use_device(gpu_id)
    docs = list(DocBin().from_disk(data_path).get_docs(spacy.blank("en").vocab))
    texts = [doc.text for doc in docs]
    # The reference notebook annotated sentence by sentence: its pipeline on the same words cut
    # into sentences is measured too, for context.
    sentences = [sent.text for doc in docs for sent in doc.sents]
    n_words = sum(len(doc) for doc in docs)
    # A new HF head's tags: the data's entity types.
    tags = iob2_tags(sorted({ent.label_ for doc in docs for ent in doc.ents}))
    with one_line_errors():
        runs = variants(
            model,
            backbone,
            tags,
            gpu_id,
            hf_batch_size,
            texts,
            sentences,
            token_objects,
            [name for name in only.split(",") if name],
        )
    for run, inputs in runs.values():
        run(inputs[:8])  # warm-up
    seconds: Dict[str, List[float]] = {name: [] for name in runs}
    for repetition in range(repetitions):
        for name, (run, inputs) in runs.items():
            if gpu_id >= 0:
                torch.cuda.synchronize()
            start = time.perf_counter()
            run(inputs)
            if gpu_id >= 0:
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
            typer.echo(f"rep {repetition + 1} {name}: {n_words / seconds[name][-1]:.0f} words/s")
    fp32_nlp = spacy.load(model, config={"components.transformer.model.cpu_bf16": False})
    result = {
        "texts": len(texts),
        "sentences": len(sentences),
        "words": n_words,
        "repetitions": repetitions,
        "batch_size": fp32_nlp.batch_size,
        "hf_batch_size": hf_batch_size or 1,
        "gpu_id": gpu_id,
        "machine": {**machine_info(), "native_bf16": cpu_has_native_bf16()},
        "components_fp32_seconds": component_seconds(fp32_nlp, texts),
        "compute_limit": compute_limit(backbone, texts, gpu_id),
        "words_per_second": {name: round(n_words / statistics.median(s), 1) for name, s in seconds.items()},
        "seconds": {name: [round(x, 3) for x in s] for name, s in seconds.items()},
    }
    atomic_write_text(output_path, json.dumps(result, indent=2) + "\n")
    typer.echo(json.dumps(result["words_per_second"], indent=2))


if __name__ == "__main__":
    app()
