"""Attempts that outages don't use up (docs/amqp.md, "Attempts"): a job's attempt and
the dead-letter decision count the times a worker started it, as the portal recorded
it, not the broker's redeliveries. Real broker, real gateway and workers."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from ocho import topology
from tests.infra import Stack, wait_for


@pytest.fixture
def stack(tmp_path: Path, fresh_amqp_url: str, tools_dir: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir, delivery_limit=1,
                  kill_grace=1)
    stack.start_gateway()
    yield stack
    stack.stop()


def hand_out_without_starting(amqp_url: str, job_id: str, times: int) -> None:
    """A consumer takes the request and its channel closes before the job started:
    what a worker on a lost node, or one stopped at the wrong moment, does."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for _ in range(times):
            channel = connection.channel()
            deadline = time.monotonic() + 10
            method = None
            while method is None and time.monotonic() < deadline:
                method, properties, _body = channel.basic_get(topology.JOBS_QUEUE)
                time.sleep(0.02 if method is None else 0)
            assert method is not None and properties.message_id == job_id
            channel.close()  # unacked: back to the queue, x-delivery-count + 1
    finally:
        connection.close()


def test_redeliveries_without_a_start_use_up_no_attempt(stack: Stack,
                                                         fresh_amqp_url: str) -> None:
    job = stack.submit("exit", ["0"])
    hand_out_without_starting(fresh_amqp_url, job["id"], times=3)
    stack.start_worker(concurrency=1)
    done = stack.wait(job["id"], timeout=30)
    # With OCHO_DELIVERY_LIMIT=1 the broker's own count (3 redeliveries) would have
    # dead-lettered it.
    assert (done["state"], done["attempt"]) == ("succeeded", 1), done


def test_a_job_started_as_often_as_the_limit_is_rejected_not_run_again(stack: Stack) -> None:
    first = stack.start_worker(concurrency=1)
    job = stack.submit("sleep", ["30"])
    wait_for(lambda: stack.wait(job["id"], timeout=1)["state"] == "running", timeout=20,
             what="the job to start")
    first.send_signal(signal.SIGKILL)  # its request goes back to ocho.jobs
    first.wait(timeout=10)
    stack.start_worker(concurrency=1)
    done = stack.wait(job["id"], timeout=30)
    assert done["state"] == "rejected", done
    assert "started 1 times without finishing" in (done["reason"] or ""), done
