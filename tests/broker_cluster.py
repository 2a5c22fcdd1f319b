"""A private 3-node RabbitMQ cluster on loopback, for tests that kill broker nodes.

Built on tests.private_broker: every node has its own name, AMQP and distribution
ports and data directory; the three share one private Erlang cookie and nothing
else with the machine's shared node, which no command here names. Nodes b and c
join a with `rabbitmqctl -n … join_cluster`; a killed node is started again on
the same ports and rejoins by itself (it still holds the cluster's membership).
"""

from __future__ import annotations

import secrets
import shutil
import threading
from pathlib import Path

from tests.private_broker import PrivateBroker


class Cluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        self.base = base
        cookie = secrets.token_hex(20).upper()
        tag = secrets.token_hex(3)
        self.nodes = [PrivateBroker(base / f"node{i}", cookie=cookie,
                                    name=f"ocho-cluster-{tag}-{i}@localhost")
                      for i in range(size)]

    def start(self) -> Cluster:
        """Start every node at once (each start is mostly waiting), then join them."""
        errors: list[BaseException] = []

        def start(node: PrivateBroker) -> None:
            try:
                node.start()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(node,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        if errors:
            raise errors[0]
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        return self

    def urls(self, vhost: str) -> str:
        """OCHO_AMQP_URL for all nodes: URLs separated by ';'."""
        return ";".join(node.url(vhost) for node in self.nodes)

    def create_vhost(self) -> str:
        name = f"ocho-test-{secrets.token_hex(6)}"
        self.nodes[0].ctl("add_vhost", name)
        self.nodes[0].ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return name

    def by_port(self, port: int) -> PrivateBroker:
        return next(node for node in self.nodes if node.amqp_port == port)

    def alive(self) -> list[PrivateBroker]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def leader_of(self, queue: str, vhost: str) -> PrivateBroker:
        """The node leading a quorum queue now."""
        out = self.alive()[0].ctl("list_queues", "-p", vhost, "name", "leader",
                                  "--no-table-headers")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return next(n for n in self.nodes if n.node == parts[1])
        raise AssertionError(f"no leader for {queue}: {out}")

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.close()
            except Exception:  # noqa: BLE001, S110 - the others must close too
                pass
        shutil.rmtree(self.base, ignore_errors=True)
