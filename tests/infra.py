"""Real services for tests: a RabbitMQ vhost and a database of their own per
run, and the portal's processes started as a user would start them."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("OCHO_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def create_vhost() -> tuple[str, str]:
    """A fresh vhost so that nothing left by an earlier (crashed) run leaks in."""
    name = f"ocho-test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name, f"amqp://guest:guest@127.0.0.1:5672/{name}"


def delete_vhost(name: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)


def create_pg_database() -> tuple[str, str]:
    import psycopg

    name = f"ocho_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A test (or, as pytestmark, a module) whose tools run warm, then cold; its
# stack takes the `tool_start` fixture.
BOTH_STARTS = pytest.mark.parametrize("tool_start", ["warm", "cold"], indirect=True)


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class Stack:
    """Gateway and workers as separate processes, against one vhost and one store."""

    def __init__(self, workdir: Path, amqp_url: str, database_url: str | None = None,
                 bin_dir: Path = BIN, **settings: Any) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir  # where ocho-gateway and ocho-worker are: another venv's, say
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "OCHO_AMQP_URL": amqp_url,
            "OCHO_DATABASE_URL": database_url or f"sqlite:///{workdir / 'ocho.sqlite3'}",
            "OCHO_BIND": f"127.0.0.1:{self.port}",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.update({f"OCHO_{k.upper()}": str(v) for k, v in settings.items()})
        self.gateway: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []

    def _spawn(self, command: list[str], log_name: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.workdir / log_name
        self._logs.append(log)
        with open(log, "ab") as out:
            return subprocess.Popen(command, cwd=self.workdir, env=env or self.env,
                                    stdout=out, stderr=subprocess.STDOUT)

    def start_gateway(self) -> None:
        self.gateway = self._spawn([str(self.bin_dir / "ocho-gateway")], "gateway.log")
        wait_for(self._ready, timeout=30, what="gateway /readyz")

    def _ready(self) -> bool:
        if self.gateway is not None and self.gateway.poll() is not None:
            raise AssertionError(f"gateway exited: {self.read_log('gateway.log')}")
        tokens = self.env.get("OCHO_TOKENS", "")
        headers = {"Authorization": f"Bearer {tokens.split(',')[0]}"} if tokens else {}
        try:
            return requests.get(f"{self.url}/readyz", headers=headers,
                                timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def start_worker(self, concurrency: int = 2, wait_ready: bool = True,
                     **env: str) -> subprocess.Popen[bytes]:
        index = len(self.workers)
        worker_env = {**self.env, **env}
        proc = self._spawn([str(self.bin_dir / "ocho-worker"), "--concurrency", str(concurrency)],
                           f"worker{index}.log", env=worker_env)
        self.workers.append(proc)
        log = self.workdir / f"worker{index}.log"
        if not wait_ready:
            return proc
        wait_for(lambda: "consuming" in log.read_text(errors="replace") or proc.poll() is not None,
                 timeout=30, what="worker to start consuming")
        if proc.poll() is not None:
            raise AssertionError(f"worker exited: {log.read_text(errors='replace')}")
        if worker_env.get("OCHO_TOOL_START") == "warm":
            # Jobs before the zygote is ready start cold: a warm test must not.
            wait_for(lambda: "tool zygote" in (text := log.read_text(errors="replace"))
                     and " ready in " in text, timeout=60, what="the worker's tool zygote")
        return proc

    def read_log(self, name: str) -> str:
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in self._logs if p.exists())

    def stop(self) -> None:
        procs = [p for p in [self.gateway, *self.workers] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- the HTTP client a user would be --------------------------------------------------
    def submit(self, tool: str, args: list[str] | None = None, timeout: int | None = None,
               files: dict[str, bytes] | None = None) -> dict[str, Any]:
        if files:
            form = {"tool": tool, "args": json.dumps(list(args or []))}
            if timeout:
                form["timeout"] = str(timeout)
            response = requests.post(
                f"{self.url}/jobs",
                data=form,
                files={name: (name, content) for name, content in files.items()},
                timeout=30)
        else:
            body: dict[str, Any] = {"tool": tool, "args": list(args or [])}
            if timeout:
                body["timeout"] = timeout
            response = requests.post(f"{self.url}/jobs", json=body, timeout=30)
        assert response.status_code == 202, response.text
        return response.json()

    def wait(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = max(1, int(deadline - time.monotonic()))
            response = requests.get(f"{self.url}/jobs/{job_id}",
                                    params={"wait": min(left, 30)}, timeout=left + 10)
            if response.status_code == 404 and time.monotonic() < deadline:
                # Submitted straight over AMQP: the gateway learns of it from events.
                time.sleep(0.1)
                continue
            job = response.json()
            if job["state"] not in ("submitting", "queued", "running") \
                    or time.monotonic() > deadline:
                return job

    def output(self, job_id: str, offset: int = 0) -> dict[str, Any]:
        return requests.get(f"{self.url}/jobs/{job_id}/output", params={"offset": offset},
                            timeout=30).json()


def clone_tools_dir(target: Path) -> Path:
    """The shipped tools plus the small test tools under tests/tools."""
    shutil.copytree(ROOT / "tools", target, dirs_exist_ok=True)
    shutil.copytree(ROOT / "tests" / "tools", target, dirs_exist_ok=True)
    return target


def processes_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is pgid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; fields after ')' are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


class PrivatePostgres:
    """A PostgreSQL server of a test's own (initdb into a temporary directory, loopback,
    a free port, its own socket directory), for tests that restart it: the shared
    server on 5432 is never touched. Runs as the `postgres` user when started by root
    (initdb refuses root)."""

    def __init__(self) -> None:
        self.bin = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1].parent
        self.dir = Path(tempfile.mkdtemp(prefix="ocho-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self._as_user, str(self.bin / tool), *args], check=True,
                       capture_output=True, timeout=timeout, cwd=self.dir)

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")
        self._pg_ctl("start")

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.dir / "server.log"), "-w", "-t", "30", *extra, action)

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def halt(self) -> None:
        """Stop the server, keeping its data: `resume` starts it again."""
        self._pg_ctl("stop", "-m", "fast")

    def resume(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        try:
            self._pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
