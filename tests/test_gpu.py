"""The GPU path, run where a CUDA GPU and CuPy work (`pytest -m gpu`, or `spacy project run
gpu-check`), skipped with the reason elsewhere: fp16 training, evaluate and predict on the GPU, and
the release pipeline giving on the GPU the entities it gives on the CPU. They train their own tiny
model on the GPU, so that they take about a minute there."""

import json
import sys

import pytest
from conftest import CODE, ROOT, run_checked, run_in_clean_process
from spacy.util import load_config

from scripts.project_util import gpu_problem

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


GPU = "0"


@pytest.fixture(scope="module")
def gpu_project(tmp_path_factory, tiny_transformer, conll_dir):
    """The sample data converted, the tiny model trained 60 steps on the GPU (fp16) and assembled with
    confidences: what the GPU tests need, in seconds (the CPU-trained `project` fixture, a wheel
    included, takes minutes, and GPU time is scarce)."""
    project = tmp_path_factory.mktemp("gpu-project")
    run_checked(
        [
            sys.executable,
            "-m",
            "scripts.convert",
            str(project / "corpus"),
            "--conll-dir",
            str(conll_dir),
            "--n-sents",
            "2",
        ],
        cwd=ROOT,
    )
    run_checked(
        [
            sys.executable,
            "-m",
            "scripts.train",
            "configs/ner_transformer.cfg",
            "--output",
            str(project / "training"),
            "--code",
            CODE,
            "--gpu-id",
            GPU,
            "--train",
            str(project / "corpus/train.spacy"),
            "--dev",
            str(project / "corpus/dev.spacy"),
            "--transformer",
            str(tiny_transformer),
            "--max-steps",
            "60",
            "--eval-frequency",
            "20",
            "--learn-rate",
            "1e-3",
            "--warmup-steps",
            "5",
            "--batch-size",
            "300",
        ],
        cwd=ROOT,
    )
    run_checked(
        [
            sys.executable,
            "-m",
            "scripts.assemble",
            str(project / "training/model-best"),
            str(project / "training/model-release"),
            "--code",
            CODE,
        ],
        cwd=ROOT,
    )
    return project


def test_fp16_training_saves_model_best(gpu_project):
    output = gpu_project / "training"
    config = load_config(output / "model-best" / "config.cfg", interpolate=False)
    assert config["components"]["transformer"]["model"]["mixed_precision"] is True
    assert json.loads((output / "train_time.json").read_text())["gpu_id"] == 0
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [0, 20, 40, 60]
    assert all(line["words"] > 0 or line["step"] == 0 for line in log)
    assert "seqeval_f" in json.loads((output / "model-best" / "meta.json").read_text())["performance"]


def test_evaluate_on_gpu_scores_like_the_cpu(gpu_project, tmp_path):
    scores = {}
    for device in ("-1", GPU):
        output = tmp_path / f"test{device}.json"
        run_checked(
            [
                sys.executable,
                "-m",
                "scripts.evaluate",
                str(gpu_project / "training/model-release"),
                str(gpu_project / "corpus/test.spacy"),
                "--output",
                str(output),
                "--code",
                CODE,
                "--gpu-id",
                device,
            ],
            cwd=ROOT,
        )
        scores[device] = json.loads(output.read_text())
    assert scores[GPU]["seqeval_f"] == pytest.approx(scores["-1"]["seqeval_f"], abs=0.02)
    assert scores[GPU]["seqeval_f"] > 0.3  # 60 steps teach the sample data's entities on the GPU too


ENTITIES = """
import json, sys, spacy
from spacy.cli._util import import_code
for path in sys.argv[3].split(","):
    import_code(path)
if sys.argv[1] == "gpu":
    spacy.require_gpu()
nlp = spacy.load(sys.argv[4])
docs = list(nlp.pipe(json.loads(sys.argv[2])))
print(json.dumps({
    "on_gpu": type(nlp.get_pipe("ner").model.ops).__name__ == "CupyOps",
    "ents": [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs],
    "confidences": [[e._.confidence for e in doc.ents] for doc in docs],
}))
"""


def test_pipeline_on_gpu_gives_the_cpu_entities(gpu_project):
    """The release pipeline in a fresh process on each device (the packaged wheel holds this pipeline
    and this code; test_workflow installs and checks it on the CPU)."""
    code = ",".join(str(ROOT / path) for path in CODE.split(","))
    model = str(gpu_project / "training/model-release")
    on_cpu = run_in_clean_process(gpu_project, ENTITIES, "cpu", json.dumps(TEXTS), code, model)
    on_gpu = run_in_clean_process(gpu_project, ENTITIES, "gpu", json.dumps(TEXTS), code, model)
    assert on_gpu["on_gpu"] and not on_cpu["on_gpu"]
    assert on_gpu["ents"] == on_cpu["ents"] and any(on_gpu["ents"])
    for gpu_doc, cpu_doc in zip(on_gpu["confidences"], on_cpu["confidences"]):
        assert all(0.0 <= confidence <= 1.0 for confidence in gpu_doc)
        assert gpu_doc == pytest.approx(cpu_doc, abs=0.01)


def test_predict_on_gpu(gpu_project, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    outputs = {}
    for device in ("-1", GPU):
        outputs[device] = tmp_path / f"out{device}.jsonl"
        run_checked(
            [
                sys.executable,
                "-m",
                "annotate.predict",
                str(source),
                "--model",
                str(gpu_project / "training/model-release"),
                "--code",
                CODE,
                "--output",
                str(outputs[device]),
                "--gpu-id",
                device,
            ],
            cwd=ROOT,
        )
    on_cpu, on_gpu = ([json.loads(line) for line in path.read_text().splitlines()] for path in outputs.values())
    assert [r["id"] for r in on_gpu] == [0, 1, 2]
    assert [[(e["start"], e["end"], e["entity_group"]) for e in r["entities"]] for r in on_gpu] == [
        [(e["start"], e["end"], e["entity_group"]) for e in r["entities"]] for r in on_cpu
    ]
