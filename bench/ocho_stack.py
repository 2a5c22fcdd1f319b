"""The portal as a user runs it — one gateway and N workers, as processes — against a
vhost and a SQLite store of its own, with the bench's tools."""

from __future__ import annotations

import os
import socket
import tempfile
import urllib.request
from pathlib import Path

from common import (
    PROJECT_VENV,
    TOOLS_DIR,
    Processes,
    amqp_url,
    create_vhost,
    delete_vhost,
    tree_memory_mb,
    wait_for,
)

# The 10 MB tool's output must be stored whole: the default cap is 4 MiB.
OUTPUT_CAP = 16 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OchoStack:
    def __init__(self, workers: int, concurrency: int, **settings: str) -> None:
        self.workers_wanted = workers
        self.concurrency = concurrency
        self.tmp = tempfile.TemporaryDirectory(prefix="ocho-bench-")
        self.dir = Path(self.tmp.name)
        self.processes = Processes(self.dir)
        self.vhost = create_vhost("ocho")
        self.amqp_url = amqp_url(self.vhost)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "OCHO_AMQP_URL": self.amqp_url,
            "OCHO_DATABASE_URL": f"sqlite:///{self.dir / 'ocho.sqlite3'}",
            "OCHO_BIND": f"127.0.0.1:{self.port}",
            "OCHO_TOOLS_DIR": str(TOOLS_DIR),
            "OCHO_OUTPUT_CAP": str(OUTPUT_CAP),
            "PYTHONUNBUFFERED": "1",
            **{f"OCHO_{k.upper()}": v for k, v in settings.items()},
        }
        self.gateway_pid = 0
        self.worker_pids: list[int] = []

    def start(self) -> OchoStack:
        bin_dir = PROJECT_VENV / "bin"
        gateway = self.processes.spawn([str(bin_dir / "ocho-gateway")], "gateway.log", self.env)
        self.gateway_pid = gateway.pid
        wait_for(lambda: self._ready(gateway.poll()), 30, "the gateway's /readyz")
        for index in range(self.workers_wanted):
            log = f"worker{index}.log"
            proc = self.processes.spawn([str(bin_dir / "ocho-worker"), "--concurrency",
                                         str(self.concurrency)], log, self.env)
            wait_for(lambda log=log, proc=proc: "consuming" in self.processes.log(log)
                     or proc.poll() is not None, 30, f"{log}: consuming")
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.processes.log(log)[-2000:]}")
            if self.env.get("OCHO_TOOL_START", "warm") == "warm":
                # Until its zygote is ready a worker starts tools cold.
                wait_for(lambda log=log: " ready in " in self.processes.log(log), 120,
                         f"{log}: tool zygote ready")
            self.worker_pids.append(proc.pid)
        return self

    def _ready(self, exited: int | None) -> bool:
        if exited is not None:
            raise RuntimeError(f"gateway exited: {self.processes.log('gateway.log')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def worker_memory(self) -> dict[str, float]:
        """The workers, their reapers and tool zygotes, summed."""
        return tree_memory_mb(self.worker_pids)

    def gateway_memory(self) -> dict[str, float]:
        return tree_memory_mb([self.gateway_pid])

    def stop(self) -> None:
        try:
            self.processes.stop()
        finally:
            delete_vhost(self.vhost)
            self.tmp.cleanup()
