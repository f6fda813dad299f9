"""The GPU path, run where a CUDA GPU and CuPy work (`pytest -m gpu`, or `spacy project run
gpu-check`), skipped with the reason elsewhere: fp16 training, evaluate and predict on the GPU, and
the packaged model giving on the GPU the entities it gives on the CPU."""
import json
import sys

import pytest
from conftest import CODE, ROOT, run_checked, run_in_clean_process

from project_util import gpu_problem

GPU_PROBLEM = gpu_problem(0)
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(GPU_PROBLEM is not None, reason=f"needs a CUDA GPU that spaCy can use: {GPU_PROBLEM}"),
]
TEXTS = [
    "Bill Gates visited Microsoft in Seattle on Monday .",
    "Angela Merkel met Reuters in London after talks with officials .",
    "Steffi Graf joined Ajax in Brazil , said the German report .",
]


def test_fp16_training_saves_model_best(project, tiny_transformer, tmp_path):
    output = tmp_path / "training"
    run_checked([sys.executable, "scripts/train.py", str(ROOT / "configs/ner_transformer.cfg"), "--output", str(output),
                 "--code", CODE, "--gpu-id", "0", "--train", "corpus/train.spacy", "--dev", "corpus/dev.spacy",
                 "--transformer", str(tiny_transformer),
                 "--max-steps", "20", "--eval-frequency", "10", "--learn-rate", "1e-3", "--warmup-steps", "2",
                 "--batch-size", "300"], cwd=project)
    config = (output / "model-best" / "config.cfg").read_text()
    assert "mixed_precision = true" in config
    assert json.loads((output / "train_time.json").read_text())["gpu_id"] == 0
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [0, 10, 20]
    assert all(line["words"] > 0 or line["step"] == 0 for line in log)
    assert "seqeval_f" in json.loads((output / "model-best" / "meta.json").read_text())["performance"]


def test_evaluate_on_gpu_scores_like_the_cpu(project, tmp_path):
    output = tmp_path / "test.json"
    run_checked([sys.executable, "scripts/evaluate.py", "training/model-release", "corpus/test.spacy",
                 "--output", str(output), "--code", CODE, "--gpu-id", "0"], cwd=project)
    gpu_scores = json.loads(output.read_text())
    cpu_scores = json.loads((project / "metrics/test.json").read_text())
    assert gpu_scores["seqeval_f"] == pytest.approx(cpu_scores["seqeval_f"], abs=0.02)
    assert gpu_scores["confidence"]["calibrated"]["entities"] > 0


ENTITIES = """
import json, sys, spacy
if sys.argv[1] == "gpu":
    spacy.require_gpu()
nlp = spacy.load("en_conll_distilbert")
docs = list(nlp.pipe(json.loads(sys.argv[2])))
print(json.dumps({
    "on_gpu": type(nlp.get_pipe("ner").model.ops).__name__ == "CupyOps",
    "ents": [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs],
    "confidences": [[e._.confidence for e in doc.ents] for doc in docs],
}))
"""


def test_packaged_model_on_gpu_gives_the_cpu_entities(installed_model):
    on_cpu = run_in_clean_process(installed_model, ENTITIES, "cpu", json.dumps(TEXTS))
    on_gpu = run_in_clean_process(installed_model, ENTITIES, "gpu", json.dumps(TEXTS))
    assert on_gpu["on_gpu"] and not on_cpu["on_gpu"]
    assert on_gpu["ents"] == on_cpu["ents"] and any(on_gpu["ents"])
    for gpu_doc, cpu_doc in zip(on_gpu["confidences"], on_cpu["confidences"]):
        assert all(0.0 <= confidence <= 1.0 for confidence in gpu_doc)
        assert gpu_doc == pytest.approx(cpu_doc, abs=0.01)


def test_predict_on_gpu(project, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    outputs = {}
    for device in ("-1", "0"):
        outputs[device] = tmp_path / f"out{device}.jsonl"
        run_checked([sys.executable, "annotate/predict.py", str(source), "--model", "training/model-release",
                     "--code", CODE, "--output", str(outputs[device]), "--gpu-id", device], cwd=project)
    on_cpu, on_gpu = ([json.loads(line) for line in path.read_text().splitlines()] for path in outputs.values())
    assert [r["id"] for r in on_gpu] == [0, 1, 2]
    assert [[(e["start"], e["end"], e["entity_group"]) for e in r["entities"]] for r in on_gpu] == \
        [[(e["start"], e["end"], e["entity_group"]) for e in r["entities"]] for r in on_cpu]
