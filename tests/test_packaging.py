"""What a user gets from the repository itself: the compose stack, the image
recipe, the console scripts, and a wheel that works with the checkout gone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.infra import ROOT, Stack, wait_for

BIN = Path(sys.executable).parent


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_is_valid_for_docker_compose():
    done = subprocess.run(["docker-compose", "-f", str(ROOT / "compose.yaml"), "config"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_compose_runs_rabbitmq_the_gateway_on_9000_and_two_workers():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert "management" in services["rabbitmq"]["image"]
    assert any(str(port).endswith(":9000") for port in services["gateway"]["ports"])
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("gateway", "worker"):
        assert services[name]["environment"]["OCHO_AMQP_URL"].startswith("amqp://")


def test_compose_publishes_only_on_loopback_and_builds_one_image():
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    published = [str(port) for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published), published
    assert [name for name, service in services.items() if "build" in service] == ["gateway"]
    assert services["worker"]["image"] == services["gateway"]["image"]
    for name in ("gateway", "worker"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert "/healthz" in " ".join(services["gateway"]["healthcheck"]["test"])
    worker_check = " ".join(services["worker"]["healthcheck"]["test"])
    assert services["worker"]["environment"]["OCHO_LIVENESS_FILE"] in worker_check


def test_image_has_a_pinned_base_and_an_init_process():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert re.search(r"@sha256:[0-9a-f]{64}$|:\d+\.\d+\.\d+[-\w]*$", base), base
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--"\]', dockerfile, re.MULTILINE)
    assert "--constraint constraints.txt" in dockerfile


def test_worker_touches_its_liveness_file_while_consuming(fresh_amqp_url: str, tmp_path: Path):
    alive = tmp_path / "worker.alive"
    stack = Stack(tmp_path, fresh_amqp_url)
    try:
        stack.start_worker(concurrency=1, OCHO_LIVENESS_FILE=str(alive))
        first = wait_for(lambda: alive.exists() and alive.stat().st_mtime, timeout=10,
                         what="the liveness file")
        wait_for(lambda: alive.stat().st_mtime > first, timeout=15, interval=0.5,
                 what="the liveness file touched again")
    finally:
        stack.stop()


def test_dockerfile_copies_only_what_exists():
    for line in re.findall(r"^COPY (.+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE):
        *sources, _destination = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source


@pytest.mark.parametrize("script", ["ocho-gateway", "ocho-worker", "ocho"])
def test_console_scripts_answer_help(script: str):
    done = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()


SHIPPED_TOOLS = ["deploy", "grep", "info", "kill", "log", "ls", "scale"]
# What a copy of the checkout needs no more than git would give it.
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.sqlite3*", "build",
                                    "dist", "*.egg-info", ".*_cache", ".hypothesis")


CHECKOUT_HINTS = ("OCHO_TOOLS_DIR", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")


def run(*command: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True,
                          text=True, timeout=180, env=_clean_env())
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done.stdout


def _clean_env() -> dict[str, str]:
    """No hint of the checkout: no tools dir, import path or venv of ours."""
    return {k: v for k, v in os.environ.items() if k not in CHECKOUT_HINTS}


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A wheel built from a copy of the checkout, installed (with the lock) into a fresh
    venv; the copy is deleted before anything runs. uv keeps this to seconds."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    run(BIN / "uv", "build", "--quiet", "--wheel", "--out-dir", base / "dist", source)
    shutil.rmtree(source)
    (wheel,) = (base / "dist").glob("ocho_portal-*.whl")
    venv = base / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    run(BIN / "uv", "pip", "install", "--quiet", "--python", venv / "bin" / "python",
        "--constraint", ROOT / "constraints.txt", wheel)
    yield venv


def test_installed_wheel_runs_gateway_worker_and_all_seven_tools(
        wheel_venv: Path, fresh_amqp_url: str, tmp_path: Path):
    bin_dir = wheel_venv / "bin"
    where = run(bin_dir / "python", "-c", "import ocho.settings as s; print(s.__file__); "
                "print(s.SHIPPED_TOOLS_DIR)", cwd=tmp_path).split()
    assert all(Path(p).is_relative_to(wheel_venv) for p in where), where
    stack = Stack(tmp_path, fresh_amqp_url, bin_dir=bin_dir, log_level="info")
    stack.env = {k: v for k, v in stack.env.items() if k not in CHECKOUT_HINTS}
    try:
        stack.start_gateway()
        stack.start_worker(concurrency=1)
        tools = requests.get(f"{stack.url}/tools", timeout=10).json()["tools"]
        assert sorted(tool["name"] for tool in tools) == SHIPPED_TOOLS
        job = stack.wait(stack.submit("deploy", ["--help"])["id"], timeout=60)
        assert job["state"] == "succeeded", (job, stack.logs())
        assert "usage: deploy" in stack.output(job["id"])["data"]
        page = requests.get(f"{stack.url}/", timeout=10)  # its template ships too
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        stack.stop()


def test_installed_commands_answer_version_and_help(wheel_venv: Path, tmp_path: Path):
    bin_dir = wheel_venv / "bin"
    for command in ("ocho", "ocho-gateway", "ocho-worker"):
        assert re.fullmatch(rf"{command} \d+\.\d+\S*\n",
                            run(bin_dir / command, "--version", cwd=tmp_path))
    assert "usage: ocho" in run(bin_dir / "python", "-m", "ocho", "--help", cwd=tmp_path)


def test_installed_without_postgres_extra_says_how_to_get_it(wheel_venv: Path, tmp_path: Path):
    done = subprocess.run([str(wheel_venv / "bin" / "ocho-gateway")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**_clean_env(), "OCHO_DATABASE_URL": "postgresql://u:pw@db/ocho"})
    assert done.returncode != 0
    assert "ocho-portal[postgres]" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "pw@" not in done.stderr
