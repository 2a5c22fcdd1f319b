"""The web shell page and GET /metrics, on a live gateway and worker. The page is
checked as served (one self-contained file that uses only the documented API) and,
where Chromium is installed, run headless: its script lists the tools and the jobs,
and streams a job's output into the page."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.infra import Stack

HELLO = '''"""hello [NAME...]: say hello (a test tool)."""
import argparse
parser = argparse.ArgumentParser(prog="hello")
parser.add_argument("name", nargs="*")
print("hello", *parser.parse_args().name)
'''
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("web")
    tools = workdir / "tools"
    tools.mkdir()
    (tools / "hello.py").write_text(HELLO)
    stack = Stack(workdir, amqp_url, tools_dir=tools)
    stack.start_gateway()
    stack.start_worker()
    yield stack
    stack.stop()


# -- the page ----------------------------------------------------------------------------------


def test_the_page_is_one_self_contained_file(stack: Stack) -> None:
    response = requests.get(f"{stack.url}/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    page = response.text
    assert page.lstrip().lower().startswith("<!doctype html>")
    # Nothing from elsewhere: no script, style sheet, font or image by URL.
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|url\(|@import", page, re.I)
    assert not re.search(r"https?://", page)


def test_the_page_uses_the_documented_endpoints(stack: Stack) -> None:
    page = requests.get(f"{stack.url}/", timeout=10).text
    doc = requests.get(f"{stack.url}/openapi.json", timeout=10).json()
    operations = {(method.upper(), path) for path, item in doc["paths"].items()
                  for method in item if method != "parameters"}
    for needed in [("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/{job_id}"),
                   ("GET", "/jobs/{job_id}/events"), ("POST", "/jobs/{job_id}/cancel"),
                   ("GET", "/jobs/{job_id}/output"), ("GET", "/tools")]:
        assert needed in operations
    for fragment in ['api("POST", "/jobs", form)', '"/events"', '"/cancel"', '"/jobs?limit=',
                     '"/output?offset="', 'api("GET", "/tools")', "Last-Event-ID",
                     "Authorization", 'form.append("line"']:
        assert fragment in page, fragment


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_headless_chromium_runs_the_page(stack: Stack, tmp_path: Path) -> None:
    job = stack.submit("hello", ["from", "the", "page"])
    assert stack.wait(job["id"])["state"] == "succeeded"
    # Open the job's link: the script lists tools and jobs, and streams the output.
    dom = _chromium(tmp_path, "--dump-dom", f"{stack.url}/?job={job['id']}")
    assert 'id="output"' in dom
    output = re.search(r'<pre id="output"[^>]*>(.*?)</pre>', dom, re.S)
    assert output and "hello from the page" in output[1], dom[-3000:]
    assert re.search(r'<span id="state" class="state succeeded">succeeded</span>', dom), dom
    assert ">hello</a>" in dom  # the catalog
    assert "hello from the page" in dom and job["id"] in dom  # the recent jobs
    screenshot = tmp_path / "page.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,800",
              f"{stack.url}/?job={job['id']}")
    assert screenshot.stat().st_size > 10_000
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _chromium(tmp_path: Path, *args: str) -> str:
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
         "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# -- /metrics ------------------------------------------------------------------------------------

SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"\\]*"(,[a-z_]+="[^"\\]*")*\})? -?[0-9.e+]+$')


def metrics(stack: Stack) -> dict[str, float]:
    response = requests.get(f"{stack.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, float] = {}
    declared: set[str] = set()
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        assert SAMPLE.match(line), line
        name, value = line.rsplit(" ", 1)
        assert name.split("{")[0] in declared, line  # TYPE comes before the samples
        samples[name] = float(value)
    return samples


def test_metrics_count_jobs_and_submissions(stack: Stack) -> None:
    before = metrics(stack)
    job = stack.submit("hello", ["metrics"])
    stack.wait(job["id"])
    bad = requests.post(f"{stack.url}/jobs", json={"tool": "nope"}, timeout=10)
    assert bad.status_code == 400
    huge = requests.post(f"{stack.url}/jobs", json={"tool": "hello", "timeout": 0}, timeout=10)
    assert huge.status_code == 400
    shell = requests.post(f"{stack.url}/shell", headers={"X-Shell": "hello x"}, timeout=60)
    assert shell.json()["ok"] is True
    after = metrics(stack)

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew('ocho_gateway_jobs_submitted_total{via="jobs"}') == 3
    assert grew('ocho_gateway_jobs_accepted_total{via="jobs"}') == 1
    # The exposition orders labels by name (prometheus_client).
    assert grew('ocho_gateway_jobs_rejected_total{reason="invalid",via="jobs"}') == 2
    assert grew('ocho_gateway_jobs_accepted_total{via="shell"}') == 1
    assert grew('ocho_jobs{state="succeeded"}') == 2
    assert after['ocho_jobs{state="queued"}'] == 0
    assert after['ocho_gateway_broker_connected{connection="publisher"}'] == 1
    assert after['ocho_gateway_broker_connected{connection="recorder"}'] == 1
    # At least a finished event each (a short job sends nothing else).
    assert grew("ocho_gateway_recorder_deliveries_total") >= 2
    assert after["ocho_gateway_waiting_slots"] >= 1
    assert after["ocho_gateway_waiting_slots_in_use"] == 0
