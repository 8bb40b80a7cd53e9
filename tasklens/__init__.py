"""tasklens: observability for FastAPI and Starlette background tasks.

    import tasklens
    tasklens.setup(service_name="shop")   # providers, exporters, logs
    app = FastAPI()
    tasklens.instrument(app)              # every background task of this app; GET /metrics

Everything not named in ``__all__`` is private.
"""

from tasklens import multiprocess
from tasklens.instrument import instrument
from tasklens.instrumentor import TasklensInstrumentor
from tasklens.runtime import BackgroundTasks, TaskObserver, TaskRecord, current_task
from tasklens.telemetry import Telemetry, flush, setup
from tasklens.telemetry.redact import add_sensitive_keys

__all__ = [
    "BackgroundTasks",
    "TaskObserver",
    "TaskRecord",
    "TasklensInstrumentor",
    "Telemetry",
    "add_sensitive_keys",
    "current_task",
    "flush",
    "instrument",
    "multiprocess",
    "setup",
]
