"""Acceptance of issue 14's broker half on a private 3-node RabbitMQ cluster (loopback
only; the shared node is never named): a gateway and a worker given the three URLs
keep accepting and running jobs when the node holding the portal's connections is
SIGKILLed, and again when the node leading the queues is.

What is asserted, for each kill: submits sent after the kill are accepted (202)
again within 10 s; every accepted job ends `succeeded` (0 lost, 0 stuck, none
dead-lettered because of the outage). The figures are printed (pytest -s) and
quoted in README, "Running on several machines"."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.broker_cluster import Cluster
from tests.infra import Stack, clone_tools_dir

SUBMIT_EVERY_S = 0.2
BEFORE_KILL_S = 3.0
AFTER_KILL_S = 12.0
ACCEPTED_AGAIN_WITHIN_S = 10.0


@dataclasses.dataclass
class Answer:
    sent: float
    answered: float
    status: int
    job_id: str | None


class Load:
    """Submits a short job over HTTP every SUBMIT_EVERY_S, from two threads so that a
    slow answer does not stop the stream."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(2)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        self._stop.wait(index * SUBMIT_EVERY_S / 2)
        for _ in range(1000):  # bounded: 2 × 1000 × 0.2 s is far beyond any phase
            if self._stop.is_set():
                return
            sent = time.monotonic()
            try:
                response = requests.post(f"{self.url}/jobs", json={
                    "tool": "sleep", "args": ["0.3"]}, timeout=25)
                status = response.status_code
                job_id = response.json().get("id") if status == 202 else None
            except requests.RequestException:
                status, job_id = 0, None
            self.answers.append(Answer(sent, time.monotonic(), status, job_id))
            self._stop.wait(max(0.0, sent + 2 * SUBMIT_EVERY_S - time.monotonic()))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def portal(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Stack, str]]:
    workdir = tmp_path_factory.mktemp("portal")
    vhost = cluster.create_vhost()
    stack = Stack(workdir, cluster.urls(vhost), tools_dir=clone_tools_dir(workdir / "tools"),
                  quorum_group_size=3, stream_cluster_size=3, kill_grace=1)
    stack.start_gateway()
    stack.start_worker(concurrency=4)
    try:
        yield stack, vhost
    finally:
        stack.stop()


def publisher_node_port(stack: Stack) -> int:
    """The AMQP port of the node the gateway's publisher is connected to now."""
    ports = re.findall(r"publisher: connected to broker node 127\.0\.0\.1:(\d+)",
                       stack.read_log("gateway.log"))
    assert ports, stack.read_log("gateway.log")[-3000:]
    return int(ports[-1])


def outage(stack: Stack, kill: Callable[[], None], what: str) -> None:
    with Load(stack.url) as load:
        time.sleep(BEFORE_KILL_S)
        killed_at = time.monotonic()
        kill()
        time.sleep(AFTER_KILL_S)
    answers = load.answers
    accepted = [a for a in answers if a.status == 202]
    after = [a for a in accepted if a.sent >= killed_at]
    assert after, f"no submit accepted in {AFTER_KILL_S} s after the kill\n{stack.logs()}"
    back_in = min(a.answered for a in after) - killed_at
    refused = [a for a in answers if a.status != 202]
    states: dict[str, int] = {}
    deadline = time.monotonic() + 60
    for answer in accepted:
        assert answer.job_id is not None
        job = stack.wait(answer.job_id, timeout=max(1.0, deadline - time.monotonic()))
        states[job["state"]] = states.get(job["state"], 0) + 1
        assert job["state"] == "succeeded", (job, stack.logs())
    print(f"\n{what}: {len(answers)} submits, {len(accepted)} accepted, {len(refused)} "
          f"refused (503 or no answer), accepted again {back_in:.1f} s after the kill; "
          f"accepted jobs: {states}")
    assert back_in <= ACCEPTED_AGAIN_WITHIN_S, f"{what}: accepted again only after {back_in}"


def test_killing_the_node_holding_the_portals_connections(cluster: Cluster,
                                                          portal: tuple[Stack, str]) -> None:
    stack, _vhost = portal
    node = cluster.by_port(publisher_node_port(stack))
    outage(stack, node.kill, f"SIGKILL of {node.node} (the publisher's node)")
    node.start()  # back on the same ports: it rejoins the cluster by itself


def test_killing_the_queues_leader(cluster: Cluster, portal: tuple[Stack, str]) -> None:
    stack, vhost = portal
    leader = cluster.leader_of("ocho.jobs", vhost)
    outage(stack, leader.kill, f"SIGKILL of {leader.node} (the leader of ocho.jobs)")
