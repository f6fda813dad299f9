"""Serve the NER pipeline over HTTP: the Hugging Face Inference API's token-classification shape,
with concurrent requests annotated together.

One FastAPI app (`build_app`) and one batching path (`Batcher`): the texts of the requests that wait
while the model is busy go through one `nlp.pipe` call together, through annotation.py, so the
entities are those of predict.py. A lone request goes at once. The app runs under uvicorn on this
machine by default, or as Ray Serve replicas (`--replicas N`, on a local Ray or on the cluster at
`--address`), each replica with its own model and batcher.

    python -m annotate.serve --model en_conll_distilbert --port 8080
    curl -s localhost:8080 -d '{"inputs": "Bill Gates founded Microsoft."}'
"""

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import typer
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from spacy import displacy
from spacy.displacy.templates import TPL_ENT

from annotate.annotation import AnnotationFailure, annotate_texts, kept_entities, lone_surrogate
from scripts.project_util import import_code_paths, load_pipeline, one_line_errors, use_device

app = typer.Typer(add_completion=False)
PROJECT_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ServeSettings:
    """What a server (or each Ray Serve replica) loads and the limits it keeps."""

    model: str
    code_paths: str = ""
    gpu_id: int = -1
    max_batch_texts: int = 32
    batch_wait_ms: float = 10.0
    max_queue_texts: int = 1024
    max_text_chars: int = 1_000_000
    max_body_bytes: int = 10_000_000
    max_texts: int = 256
    request_timeout_s: float = 60.0


class Overloaded(Exception):
    """The queue holds as many texts as it may: the request is refused, not queued."""


@dataclass
class Pending:
    texts: List[str]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Annotates the texts of concurrent requests together: one `annotate_texts` call (one `nlp.pipe`)
    a batch, on one thread beside the event loop. A batch takes what is queued, up to MAX_BATCH_TEXTS
    (a request that would overflow it starts the next; one larger than that goes alone); it waits for
    more only while requests keep coming, and no longer than WAIT_S after its first request arrived.
    A request that finds the queue empty goes at once."""

    def __init__(self, nlp, max_batch_texts: int, wait_s: float, max_queue_texts: int):
        self.nlp = nlp
        self.max_batch_texts = max_batch_texts
        self.wait_s = wait_s
        self.max_queue_texts = max_queue_texts
        self.queue: "asyncio.Queue[Pending]" = asyncio.Queue()
        self.queued_texts = 0
        self.held: Optional[Pending] = None  # taken from the queue, first in the next batch
        self.batches = self.texts_done = 0  # for /health: how much batching happens
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nlp")
        self.task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    def submit(self, texts: List[str]) -> asyncio.Future:
        if self.queued_texts + len(texts) > self.max_queue_texts and self.queued_texts > 0:
            raise Overloaded(
                f"{self.queued_texts} texts are waiting, the most this server queues is {self.max_queue_texts}"
            )
        pending = Pending(texts, asyncio.get_running_loop().create_future())
        self.queued_texts += len(texts)
        self.queue.put_nowait(pending)
        return pending.future

    def take(self, pending: Pending, batch: List[Pending]) -> int:
        self.queued_texts -= len(pending.texts)
        if not pending.future.cancelled():  # a request that timed out is not annotated
            batch.append(pending)
            return len(pending.texts)
        return 0

    async def next_batch(self) -> List[Pending]:
        batch: List[Pending] = []
        first, self.held = self.held or await self.queue.get(), None
        size = self.take(first, batch)
        lone = self.queue.empty()
        deadline = first.arrived + self.wait_s
        while size < self.max_batch_texts and not lone:
            if self.queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                pending = self.queue.get_nowait()
            if size + len(pending.texts) > self.max_batch_texts:
                self.held = pending
                break
            size += self.take(pending, batch)
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.next_batch()
            if not batch:
                continue
            texts = [text for pending in batch for text in pending.texts]
            self.batches += 1
            self.texts_done += len(texts)
            try:
                results = await loop.run_in_executor(self.executor, annotate_texts, self.nlp, texts, max(len(texts), 1))
            except Exception as err:  # annotate_texts isolates each text; this is the pipeline failing whole
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(err)
                continue
            start = 0
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_result(results[start : start + len(pending.texts)])
                start += len(pending.texts)


class Parameters(BaseModel):
    """The token-classification task's parameters, as the HF Inference API takes them."""

    model_config = ConfigDict(extra="forbid")
    min_score: Optional[float] = Field(None, ge=0.0, le=1.0, description="Drop entities whose score is below this")
    ignore_labels: Optional[List[str]] = Field(None, description="Entity types to leave out")
    aggregation_strategy: Optional[Literal["simple"]] = Field(
        None, description="Entities are always grouped as the HF pipeline's 'simple' strategy groups them"
    )
    stride: Optional[int] = Field(None, description="Accepted for compatibility; the model's own windows apply")


class TokenClassificationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: Union[str, List[str]] = Field(..., description="A text, or a list of texts")
    parameters: Parameters = Field(default_factory=Parameters)

    @field_validator("inputs")
    @classmethod
    def no_lone_surrogates(cls, inputs: Union[str, List[str]]) -> Union[str, List[str]]:
        surrogate = lone_surrogate(inputs)
        if surrogate:
            raise ValueError(f"holds a lone surrogate ({surrogate}), which is no character")
        return inputs


class Entity(BaseModel):
    entity_group: str
    score: Optional[float]
    word: str
    start: int
    end: int


class RenderRequest(BaseModel):
    text: str
    entities: List[Entity]


def error(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    """The HF Inference API's error body: {"error": "one line"}."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def validation_message(err: RequestValidationError) -> str:
    """The first problem, with the field it is in: `inputs: Input should be a valid string`."""
    problems = err.errors()
    first = problems[0]
    if first["type"] == "json_invalid":
        return f"the body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})"
    # The deepest problem: in ["a", 3] the list's item 1, rather than the list not being a string.
    deepest = max(problems, key=lambda problem: len(problem["loc"]))
    # Union members ("str", "list[str]") are pydantic's wording, not fields of the request.
    where = ".".join(str(part) for part in deepest["loc"][1:] if part not in ("str", "list[str]")) or "body"
    if where == "inputs" and deepest["type"] in ("string_type", "list_type"):
        return "inputs: must be a string or a list of strings"
    message = str(deepest.get("ctx", {}).get("error", "")) if deepest["type"] == "value_error" else deepest["msg"]
    return f"{where}: {message}"


class RequestBodies:
    """ASGI middleware for POST bodies: over MAX_BYTES gets 413 (before it is read whole, where the
    Content-Length says so), bytes that are not UTF-8 get 422, and the rest is read as JSON whatever
    its Content-Type says (curl -d sends a form's), as the HF Inference API reads it."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        too_large = error(413, f"the request body is over {self.max_bytes:,} bytes, the most this server takes")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await too_large(scope, receive, send)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as err:
            return await error(422, f"the body is not UTF-8 (byte 0x{body[err.start]:02x} at offset {err.start})")(
                scope, receive, send
            )
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        await self.app({**scope, "headers": [*headers, (b"content-type", b"application/json")]}, replay, send)


def model_info(nlp, settings: ServeSettings) -> Dict[str, Any]:
    meta = nlp.meta
    test = meta.get("test_performance") or {}
    backbone = meta.get("backbone") or {}
    return {
        "name": f"{meta.get('lang')}_{meta.get('name')}",
        "version": meta.get("version"),
        "labels": list(nlp.get_pipe("ner").labels) if "ner" in nlp.pipe_names else [],
        "backbone": backbone.get("name")
        or nlp.config["components"].get("transformer", {}).get("model", {}).get("name"),
        "test_f1": test.get("seqeval_f"),
        "confidences": "entity_confidence" in nlp.pipe_names,
        "limits": {k: v for k, v in asdict(settings).items() if k not in ("model", "code_paths", "gpu_id")},
    }


def build_app(settings: ServeSettings, nlp=None) -> FastAPI:
    """The server. Its batcher starts in the app's lifespan, under uvicorn and in each Ray Serve replica
    alike; the lifespan also loads the model, unless NLP is given loaded."""
    state: Dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        nonlocal nlp
        if nlp is None:
            import_code_paths(settings.code_paths)
            use_device(settings.gpu_id)
            nlp = await asyncio.get_running_loop().run_in_executor(None, load_pipeline, settings.model)
        batcher = Batcher(nlp, settings.max_batch_texts, settings.batch_wait_ms / 1000, settings.max_queue_texts)
        batcher.start()
        state.update(batcher=batcher, info=model_info(nlp, settings))
        yield
        await batcher.stop()

    api = FastAPI(
        title="NER",
        description="Named entities, in the shape of the Hugging Face Inference API's token-classification task.",
        lifespan=lifespan,
    )

    @api.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, err: RequestValidationError) -> JSONResponse:
        return error(422, validation_message(err))

    @api.post(
        "/",
        response_model=Union[List[Entity], List[List[Entity]]],
        summary="The entities of a text, or of each text of a list",
    )
    async def token_classification(request: TokenClassificationRequest):
        if "batcher" not in state:
            return error(503, "the model is still loading", {"Retry-After": "5"})
        one_text = isinstance(request.inputs, str)
        texts = [request.inputs] if one_text else request.inputs

        def field(i: int) -> str:
            return "inputs" if one_text else f"inputs.{i}"

        if len(texts) > settings.max_texts:
            return error(413, f"inputs: {len(texts)} texts, the most a request takes is {settings.max_texts}")
        for i, text in enumerate(texts):
            if len(text) > settings.max_text_chars:
                return error(
                    413,
                    f"{field(i)}: {len(text):,} characters, the most a text may have here is "
                    f"{settings.max_text_chars:,}; annotate longer texts with predict or annotate_ray",
                )
        try:
            future = state["batcher"].submit(texts)
        except Overloaded as err:
            return error(503, f"overloaded: {err}; retry later", {"Retry-After": "1"})
        try:
            results = await asyncio.wait_for(future, settings.request_timeout_s)
        except asyncio.TimeoutError:
            return error(504, f"the request took over {settings.request_timeout_s:g} s")
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, AnnotationFailure)]
        if failures:
            i, failure = failures[0]
            return error(500, f"{field(i)}: cannot annotate ({failure})")
        parameters = request.parameters
        entities = [
            kept_entities(result, parameters.min_score or 0.0, parameters.ignore_labels or ()) for result in results
        ]
        return entities[0] if one_text else entities

    @api.get("/health", summary="Answers while the process is up")
    async def health():
        batcher = state.get("batcher")
        return {
            "status": "ok",
            "pid": os.getpid(),
            "batches": batcher.batches if batcher else 0,
            "texts": batcher.texts_done if batcher else 0,
            "queued_texts": batcher.queued_texts if batcher else 0,
        }

    @api.get("/ready", summary="Answers 200 once the model is loaded, 503 before")
    async def ready():
        return {"status": "ready"} if "batcher" in state else error(503, "the model is still loading")

    @api.get("/info", summary="The model: package name and version, labels, backbone, test F1")
    async def info():
        return state.get("info") or error(503, "the model is still loading")

    @api.post("/render", response_class=HTMLResponse, summary="displaCy's rendering of a text and its entities")
    async def render(request: RenderRequest):
        return render_entities(request.text, request.entities)

    page_html = resources.files("annotate").joinpath("serve_page.html").read_text(encoding="utf-8")

    @api.get("/", response_class=HTMLResponse, summary="A page to try the model")
    async def page():
        return page_html

    api.add_middleware(RequestBodies, max_bytes=settings.max_body_bytes)
    return api


# displaCy's entity markup with the entity's score after its label.
ENTITY_TEMPLATE = TPL_ENT.replace(
    "{kb_link}",
    '<span class="score" style="font-size: 0.9em; font-weight: normal; margin-left: 0.25rem">{score}</span>',
)


def render_entities(text: str, entities: List[Entity]) -> str:
    spans = [
        {
            "start": e.start,
            "end": e.end,
            "label": e.entity_group,
            "params": {"score": "" if e.score is None else f"{e.score:.2f}"},
        }
        for e in entities
    ]
    return displacy.render(
        {"text": text, "ents": spans}, style="ent", manual=True, options={"template": ENTITY_TEMPLATE}
    )


def serve_on_uvicorn(settings: ServeSettings, nlp, host: str, port: int) -> None:
    import uvicorn

    # SIGTERM and Ctrl-C: uvicorn stops taking connections, answers the requests in flight, then exits.
    uvicorn.run(build_app(settings, nlp), host=host, port=port, log_level="warning")


def serve_on_ray(
    settings: ServeSettings,
    host: str,
    port: int,
    address: Optional[str],
    replicas: int,
    cpus_per_replica: float,
    gpus_per_replica: float,
) -> None:
    """The same app as Ray Serve replicas, each with its model and batcher; Ray's proxy spreads the
    requests and Ray Serve replaces a replica that dies."""
    import ray
    from ray import serve

    def replica_app() -> FastAPI:
        return build_app(settings)

    ray.init(
        address=address or None,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"py_modules": [str(PROJECT_DIR / package) for package in ("annotate", "scripts", "model_code")]},
    )
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        deployment = serve.deployment(
            serve.ingress(replica_app)(),
            name="ner",
            num_replicas=replicas,
            ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
            # The replica's own batcher bounds its queue (503 past it); Ray's default of 5 would cap the batches.
            max_ongoing_requests=settings.max_queue_texts + settings.max_batch_texts,
        )
        serve.run(deployment.bind(), name="ner", route_prefix="/")
        typer.echo(f"Serving {settings.model} on http://{host}:{port} with {replicas} Ray Serve replica(s)", err=True)
        stopped.wait()
    finally:
        serve.shutdown()
        ray.shutdown()


@app.command()
def main(
    model: str = typer.Option("en_conll_distilbert", "--model", "-m", help="Installed package or pipeline directory"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8080, "--port", "-p", min=0, max=65535, help="Port to listen on"),
    code_paths: str = typer.Option("", "--code", "-c", help="Comma-separated Python files to import first"),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for the CPU (uvicorn)"),
    max_batch_texts: int = typer.Option(32, "--max-batch-texts", min=1, help="The most texts one nlp.pipe batch holds"),
    batch_wait_ms: float = typer.Option(
        10.0,
        "--batch-wait-ms",
        min=0.0,
        help="How long the first request of a batch may wait for others, while "
        "more keep coming (a request alone goes at once)",
    ),
    max_queue_texts: int = typer.Option(
        1024, "--max-queue-texts", min=1, help="Texts that may wait; past them a request gets 503 with Retry-After"
    ),
    max_text_chars: int = typer.Option(
        1_000_000, "--max-text-chars", min=1, help="The longest text, in characters (413 past it)"
    ),
    max_body_bytes: int = typer.Option(
        10_000_000, "--max-body-bytes", min=1, help="The largest request body, in bytes (413 past it)"
    ),
    max_texts: int = typer.Option(256, "--max-texts", min=1, help="The most texts one request may hold (413 past it)"),
    request_timeout_s: float = typer.Option(60.0, "--timeout", min=0.001, help="Seconds a request may take (504)"),
    replicas: int = typer.Option(
        0,
        "--replicas",
        min=0,
        help="0: one process under uvicorn; 1 or more: Ray Serve replicas, each holding the "
        "model once, on a local Ray or on --address",
    ),
    address: Optional[str] = typer.Option(
        None, "--address", help="The Ray cluster for the replicas (default: a local Ray)"
    ),
    cpus_per_replica: float = typer.Option(1.0, "--cpus-per-replica", min=0.01, help="CPUs per Ray Serve replica"),
    gpus_per_replica: float = typer.Option(
        0.0, "--gpus-per-replica", min=0.0, help="GPUs per Ray Serve replica; a fraction shares a GPU"
    ),
):
    """Serve the model's entities over HTTP, in the HF Inference API's token-classification shape."""
    local_model = Path(model)
    settings = ServeSettings(
        model=str(local_model.resolve()) if local_model.exists() else model,
        code_paths=",".join(str(Path(p).resolve()) for p in filter(None, code_paths.split(","))),
        gpu_id=0 if gpus_per_replica > 0 else gpu_id,
        max_batch_texts=max_batch_texts,
        batch_wait_ms=batch_wait_ms,
        max_queue_texts=max_queue_texts,
        max_text_chars=max_text_chars,
        max_body_bytes=max_body_bytes,
        max_texts=max_texts,
        request_timeout_s=request_timeout_s,
    )
    if address and not replicas:
        raise typer.BadParameter("--address deploys Ray Serve replicas: give --replicas 1 or more")
    if replicas:
        serve_on_ray(settings, host, port, address, replicas, cpus_per_replica, gpus_per_replica)
        return
    with one_line_errors():
        import_code_paths(settings.code_paths)
        use_device(gpu_id)
        nlp = load_pipeline(settings.model)  # before the port is taken: a missing model is a one-line error
    serve_on_uvicorn(settings, nlp, host, port)


if __name__ == "__main__":
    app()
