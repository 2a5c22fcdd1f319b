"""Queue arguments an operator can own: the replica counts are settings, and a queue
that already exists with other arguments is used as it is, with a warning naming
what differs, instead of keeping the portal from connecting."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pika

from tests.infra import Stack


def queue_arguments(vhost: str) -> dict[str, str]:
    done = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name",
                           "arguments", "--no-table-headers"], capture_output=True,
                          text=True, timeout=60, check=True)
    return dict(line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line)


def test_queues_declared_by_an_operator_are_used_as_they_are(
        tmp_path: Path, fresh_amqp_url: str, tools_dir: Path) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(fresh_amqp_url))
    channel = connection.channel()
    channel.queue_declare("ocho.jobs", durable=True, arguments={
        "x-queue-type": "quorum", "x-quorum-initial-group-size": 1})
    channel.queue_declare("ocho.recorder", durable=True, arguments={
        "x-queue-type": "quorum", "x-max-length": 100_000})
    connection.close()
    stack = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir, quorum_group_size=1,
                  stream_cluster_size=1)
    try:
        stack.start_gateway()
        stack.start_worker(concurrency=1)
        job = stack.submit("exit", ["0"])
        assert stack.wait(job["id"], timeout=20)["state"] == "succeeded"
        log = stack.read_log("gateway.log") + stack.read_log("worker0.log")
        for name in ("ocho.jobs", "ocho.recorder"):
            assert f"queue {name} exists with other arguments" in log, log[-3000:]
        assert "inequivalent arg" in log
    finally:
        stack.stop()
    arguments = queue_arguments(fresh_amqp_url.rsplit("/", 1)[1])
    # Made by the portal: with the replica counts of its settings.
    assert "x-quorum-initial-group-size" in arguments["ocho.dead"], arguments
    assert "x-initial-cluster-size" in arguments["ocho.control.log"], arguments
    # Made by the operator: untouched.
    assert "x-delivery-limit" not in arguments["ocho.jobs"], arguments
