"""The server people write around a model, for bench-serve to measure annotate/serve.py against:
FastAPI under uvicorn, one model call per request, in a plain `def` route (FastAPI runs it in its
thread pool, as its docs advise for blocking code). `--kind spacy` calls `nlp(text)` with our pipeline;
`--kind hf` calls the HF token-classification pipeline (aggregation_strategy="simple"), the reference
notebook's inference. Both answer `POST /` with `{"inputs": text}` as annotate/serve.py does.
"""

from typing import List

import typer
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from annotate.annotation import Entities, doc_entities
from benchmarks.benchmark_speed import hf_pipeline
from scripts.project_util import import_code_paths, iob2_tags, load_pipeline

app = typer.Typer(add_completion=False)


class OneText(BaseModel):
    inputs: str


def spacy_app(model: str) -> FastAPI:
    nlp = load_pipeline(model)
    api = FastAPI()

    @api.post("/")
    def annotate(request: OneText) -> Entities:
        return doc_entities(nlp(request.inputs))

    return api


def hf_app(backbone: str, labels: List[str]) -> FastAPI:
    ner = hf_pipeline(backbone, iob2_tags(labels), "fp32", -1)
    api = FastAPI()

    @api.post("/")
    def annotate(request: OneText) -> Entities:
        fields = ("entity_group", "score", "word", "start", "end")
        return [
            {field: entity[field] for field in fields} | {"score": float(entity["score"])}
            for entity in ner(request.inputs)
        ]

    return api


@app.command()
def main(
    kind: str = typer.Option(..., "--kind", help="spacy (nlp(text) per request) or hf (the HF pipeline per request)"),
    model: str = typer.Option(..., "--model", "-m", help="spacy: a pipeline; hf: the backbone (a head is added)"),
    labels: str = typer.Option("LOC,MISC,ORG,PER", "--labels", help="hf: the entity types of the new head"),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files to import first"),
    port: int = typer.Option(8081, "--port", "-p", help="Port on 127.0.0.1"),
):
    """Serve one model call per request, as the usual FastAPI app does."""
    if kind not in ("spacy", "hf"):
        raise typer.BadParameter("--kind must be spacy or hf")
    import_code_paths(code_paths)
    api = spacy_app(model) if kind == "spacy" else hf_app(model, labels.split(","))

    @api.get("/ready")
    def ready() -> dict:
        return {"status": "ready"}

    uvicorn.run(api, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    app()
