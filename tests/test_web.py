"""The web shell page and GET /metrics, on a live gateway and worker. The page is
checked as served (its script and style from the gateway only, under a policy that
allows no inline script, using only the documented API); tests/test_browser.py
drives it in a real browser."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from tests.infra import Stack

HELLO = '''"""hello [NAME...]: say hello (a test tool)."""
import argparse
parser = argparse.ArgumentParser(prog="hello")
parser.add_argument("name", nargs="*")
print("hello", *parser.parse_args().name)
'''


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


def test_the_page_its_script_and_style_come_from_the_gateway_only(stack: Stack) -> None:
    response = requests.get(f"{stack.url}/", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    page = response.text
    assert page.lstrip().lower().startswith("<!doctype html>")
    # No inline script or style: the policy would block them.
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>|<style|\bstyle=|\bon[a-z]+=", page, re.I)
    assert not re.search(r"https?://", page)
    for path, kind in (("/static/shell.js", "javascript"), ("/static/shell.css", "text/css"),
                       ("/favicon.ico", "image/svg+xml")):
        served = requests.get(f"{stack.url}{path}", timeout=10)
        assert served.status_code == 200 and kind in served.headers["Content-Type"], path
        assert not re.search(r"https?://(?!www\.w3\.org)", served.text), path


def test_the_page_uses_the_documented_endpoints(stack: Stack) -> None:
    script = requests.get(f"{stack.url}/static/shell.js", timeout=10).text
    doc = requests.get(f"{stack.url}/openapi.json", timeout=10).json()
    operations = {(method.upper(), path) for path, item in doc["paths"].items()
                  for method in item if method != "parameters"}
    for needed in [("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/jobs/{job_id}"),
                   ("GET", "/jobs/{job_id}/events"), ("POST", "/jobs/{job_id}/cancel"),
                   ("GET", "/jobs/{job_id}/output"), ("GET", "/tools"),
                   ("GET", "/tools/{name}")]:
        assert needed in operations
    for fragment in ['api("POST", "/jobs", form)', '"/events"', '"/cancel"', '"/jobs?limit=',
                     '"/output?offset="', 'api("GET", "/tools")', '"/tools/"', "Last-Event-ID",
                     "Authorization", 'form.append("line"']:
        assert fragment in script, fragment
    # One function makes every request (headers are set in one place).
    assert script.count("fetch(") == 1


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
