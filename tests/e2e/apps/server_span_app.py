"""One app, many tracing set-ups (``SPAN_APP_VARIANT``), for the one-server-span tests.

Every variant: ``POST /users/{name}`` adds one task; ``GET /health``; ``/ws`` a websocket
that adds a task to a denial-free echo. Variants:

- ``plain``: nothing else traces, tasklens makes the request spans;
- ``asgi_inner``: OpenTelemetry's ASGI middleware added before ``instrument`` (inside);
- ``asgi_outer``: the instrumented app wrapped in OpenTelemetry's ASGI middleware;
- ``starlette_inner``: Starlette 1.x's own ``OpenTelemetryMiddleware`` (inside);
- ``starlette_outer``: the same, added after ``instrument`` (outside);
- ``asgi_inner_excluding``, ``starlette_inner_excluding``: as the ``_inner`` ones, with
  ``excluded_urls="health"``;
- ``instrumentor``: ``FastAPIInstrumentor.instrument_app``;
- ``native``: FastAPI's own telemetry (FastAPI >= 0.164; older: as ``plain``).

On FastAPI >= 0.164 every variant but ``native`` passes ``telemetry={"tracing": False}``
(FastAPI's request spans off, its per-request telemetry on). ``SPAN_APP_OPTIONS``: JSON of
extra ``instrument`` options (``task_trace``, ...). ``SPAN_APP_PROVIDER``: ``app`` gives the
app a tracer provider of its own (``FastAPI(telemetry={"tracer_provider": ...})``),
``option`` passes it as ``instrument(tracer_provider=...)``; its resource's service is
``own-provider``, exporting OTLP/HTTP to ``SPAN_APP_OWN_ENDPOINT``, as does the logger
provider given to FastAPI's telemetry.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from fastapi import BackgroundTasks, FastAPI, WebSocket
from opentelemetry import trace
from pydantic import BaseModel

import tasklens

tasklens.setup(service_name="server-span-e2e")
VARIANT = os.environ.get("SPAN_APP_VARIANT", "plain")
OPTIONS: dict[str, Any] = json.loads(os.environ.get("SPAN_APP_OPTIONS", "{}"))
PROVIDER = os.environ.get("SPAN_APP_PROVIDER", "")
FASTAPI_NATIVE = importlib.util.find_spec("fastapi.telemetry") is not None
RECORDING: list[bool] = []


def _own_providers() -> tuple[Any, Any]:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    endpoint = os.environ["SPAN_APP_OWN_ENDPOINT"].rstrip("/")
    resource = Resource.create({"service.name": "own-provider"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{endpoint}/v1/logs"))
    )
    return tracer_provider, logger_provider


telemetry: dict[str, Any] = {}
if FASTAPI_NATIVE:
    own_tracer, own_logger = _own_providers()
    telemetry = {"logger_provider": own_logger}
    if VARIANT != "native":
        telemetry["tracing"] = False
    if PROVIDER == "app":
        telemetry["tracer_provider"] = own_tracer
if PROVIDER == "option":
    OPTIONS["tracer_provider"] = _own_providers()[0]
app = FastAPI(**({"telemetry": telemetry} if FASTAPI_NATIVE else {}))


class Item(BaseModel):
    quantity: int


@app.post("/items")
def create_item(item: Item) -> dict[str, int]:
    return {"quantity": item.quantity}


@app.get("/telemetry-data")
def telemetry_data() -> dict[str, bool]:
    from fastapi.telemetry import get_telemetry_data

    return {"present": get_telemetry_data() is not None}


def note(name: str) -> None:
    RECORDING.append(trace.get_current_span().is_recording())


@app.post("/users/{name}")
async def create_user(name: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(note, name)
    return {"name": name}


@app.get("/health")
def health(background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(note, "health")
    return {"status": "ok"}


@app.get("/recording")
def recording() -> dict[str, list[bool]]:
    return {"recording": RECORDING}


@app.websocket("/ws/{room}")
async def ws(websocket: WebSocket, room: str) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


def _asgi_middleware() -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware


def _starlette_middleware() -> Any:
    from starlette.middleware.opentelemetry import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware


if VARIANT == "asgi_inner":
    app.add_middleware(_asgi_middleware())
elif VARIANT == "starlette_inner":
    app.add_middleware(_starlette_middleware())
elif VARIANT == "asgi_inner_excluding":
    app.add_middleware(_asgi_middleware(), excluded_urls="health")
elif VARIANT == "starlette_inner_excluding":
    app.add_middleware(_starlette_middleware(), excluded_urls="health")
elif VARIANT == "instrumentor":
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app)

tasklens.instrument(app, **OPTIONS)

if VARIANT == "starlette_outer":
    app.add_middleware(_starlette_middleware())
if VARIANT == "asgi_outer":
    served: Any = _asgi_middleware()(app)
else:
    served = app
