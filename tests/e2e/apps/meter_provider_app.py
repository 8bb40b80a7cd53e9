"""An app with a meter provider of its own, for the meter-provider tests.

``setup()`` configures the global providers (service ``global-meters``, OTLP to the test
receiver). The app's own MeterProvider (service ``own-meters``) exports OTLP/HTTP to
``METER_APP_ENDPOINT`` every 200 ms; ``METER_APP_PROVIDER`` says how tasklens gets it:
``option`` (``instrument(meter_provider=...)``) or ``app``
(``FastAPI(telemetry={"meter_provider": ...})``, FastAPI >= 0.164); ``global`` passes
setup()'s global provider instead (``instrument(meter_provider=get_meter_provider())``).

``POST /run?fail=1`` adds one task: a sync one that raises ValueError, else an async one.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import BackgroundTasks, FastAPI
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import get_meter_provider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

import tasklens

tasklens.setup(service_name="global-meters")
PROVIDER = os.environ.get("METER_APP_PROVIDER", "option")
endpoint = os.environ["METER_APP_ENDPOINT"].rstrip("/")
own = MeterProvider(
    metric_readers=[
        PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"), export_interval_millis=200
        )
    ],
    resource=Resource.create({"service.name": "own-meters"}),
)
options: dict[str, Any] = {}
if PROVIDER == "app":
    fastapi_options: dict[str, Any] = {"telemetry": {"meter_provider": own}}
    app = FastAPI(**fastapi_options)
else:
    app = FastAPI()
    options["meter_provider"] = get_meter_provider() if PROVIDER == "global" else own


def failing() -> None:
    raise ValueError("declined")


async def succeeding() -> None:
    return None


@app.post("/run")
async def run(background_tasks: BackgroundTasks, fail: int = 0) -> dict[str, int]:
    background_tasks.add_task(failing if fail else succeeding)
    return {"fail": fail}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


tasklens.instrument(app, **options)
