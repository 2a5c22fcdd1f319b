"""The Celery side of the comparison: one task that does the same job body as the raw
baseline (bench/jobbody.py). Runs in Celery's own venv (bench/.venv-celery): Celery
pins python-dateutil below what the project's kubernetes client needs."""

from __future__ import annotations

import os

from celery import Celery
from jobbody import run_job

app = Celery("ocho_bench", broker=os.environ.get("BENCH_CELERY_BROKER", "amqp://"),
             backend="rpc://")
app.conf.update(
    # The same delivery guarantee as ocho: ack only after the job ran, one job per slot.
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

TOOL_PYTHON = os.environ.get("BENCH_TOOL_PYTHON", "python3")
TOOLS_DIR = os.environ.get("BENCH_TOOLS_DIR", os.path.join(os.path.dirname(__file__), "tools"))


@app.task(name="bench.run_tool")
def run_tool(tool: str, args: list[str]) -> dict[str, object]:
    code, out, err, _secs = run_job(TOOL_PYTHON, TOOLS_DIR, tool, args)
    return {"exit_code": code, "stdout": out.decode("utf-8", "replace"),
            "stderr": err.decode("utf-8", "replace")}
