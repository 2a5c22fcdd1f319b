"""OCHO_AMQP_URL as a list of broker nodes: parsed at start (a malformed URL is named,
its password never shown), and the order in which processes try the nodes."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ocho.amqp import Nodes
from ocho.client import Client
from ocho.errors import SettingsError
from ocho.settings import Settings
from tests.infra import Stack, free_port


def test_several_urls_separated_by_semicolons() -> None:
    settings = Settings.from_env({"OCHO_AMQP_URL": "amqp://u:p@a:5672/%2F; amqp://u:p@b:5673/v"})
    assert settings.amqp_urls == ("amqp://u:p@a:5672/%2F", "amqp://u:p@b:5673/v")


@pytest.mark.parametrize(("url", "says"), [
    ("amqp://u:hunter22@a:5672/%2F,amqp://u:hunter22@b/%2F", "not ','"),
    ("amqp://u:hunter22@a:5672,b:5672/%2F", "URL 1"),
    ("amqp://u:p@a/%2F;amqp://u:hunter22@b:port/%2F", "URL 2"),
    ("http://a:5672/", "amqp://"),
    (" ; ", "empty"),
])
def test_a_malformed_url_is_named_without_its_password(url: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"OCHO_AMQP_URL": url})
    assert says in str(caught.value)
    assert "hunter22" not in str(caught.value)


@pytest.mark.parametrize("module", ["ocho.worker.main", "ocho.gateway.server"])
def test_processes_exit_2_on_a_malformed_url(module: str) -> None:
    env = {**os.environ, "OCHO_AMQP_URL": "amqp://u:hunter22@a:5672,b:5672/%2F"}
    done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "OCHO_AMQP_URL=" in done.stderr and "URL 1" in done.stderr
    assert "hunter22" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_the_next_node_at_once_and_back_off_only_after_a_full_round() -> None:
    nodes = Nodes(["a", "b", "c"], rng=random.Random(7))
    seen = [nodes.url]
    delays = []
    for _ in range(6):
        delays.append(nodes.next(connected=False))
        seen.append(nodes.url)
    assert sorted(seen[:3]) == ["a", "b", "c"]  # a round visits every node once
    assert delays[0] == delays[1] == 0 and 0.25 <= delays[2] <= 0.5
    assert delays[3] == delays[4] == 0 and 0.5 <= delays[5] <= 1.0  # jittered, growing


def test_starts_spread_over_the_nodes() -> None:
    firsts = {Nodes(["a", "b", "c"], rng=random.Random(seed)).url for seed in range(40)}
    assert firsts == {"a", "b", "c"}


def test_a_lost_steady_connection_moves_on_without_waiting() -> None:
    nodes = Nodes(["a"], rng=random.Random(1))
    nodes._since -= 10  # the connection had been up for 10 s
    assert nodes.next(connected=True) == 0
    # One that closed again at once counts as a failure: no hot loop.
    assert nodes.next(connected=True) > 0


def test_a_dead_node_in_the_list_is_passed_over(tmp_path: Path, fresh_amqp_url: str,
                                                tools_dir: Path) -> None:
    """Whichever node each process starts at, a node that refuses connections costs
    nothing: the gateway, the worker and ocho.client go on with the next one."""
    vhost = fresh_amqp_url.rsplit("/", 1)[1]
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/{vhost}"
    urls = f"{dead};{fresh_amqp_url}"
    stack = Stack(tmp_path, urls, tools_dir=tools_dir)
    try:
        stack.start_gateway()
        stack.start_worker(concurrency=1)
        job = stack.submit("exit", ["0"])
        assert stack.wait(job["id"], timeout=20)["state"] == "succeeded"
        for _ in range(3):  # random starts: one of them at the dead node, most likely
            with Client(urls) as client:
                assert client.wait(client.submit("exit", ["0"]), timeout=20).state == \
                    "succeeded"
    finally:
        stack.stop()
