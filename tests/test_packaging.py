"""What a user gets from the repository itself: the compose stack, the image
recipe, and the console scripts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.infra import ROOT

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
