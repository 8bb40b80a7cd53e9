"""tasklens runtime: FastAPI/Starlette background tasks, run and observed.

import runtime, telemetry
telemetry.setup(service_name="shop")
app = FastAPI()
runtime.instrument(app)
"""

from runtime.background import BackgroundTasks
from runtime.context import current_task
from runtime.instrument import instrument
from runtime.observer import TaskObserver
from runtime.options import RuntimeOptions
from runtime.record import TaskRecord
from runtime.runner import TaskRunner

__all__ = [
    "BackgroundTasks",
    "RuntimeOptions",
    "TaskObserver",
    "TaskRecord",
    "TaskRunner",
    "current_task",
    "instrument",
]
