"""The OpenAPI document: a valid OpenAPI 3.1 document, covering every route the app
serves, made from the schemas the gateway answers with; and schemathesis, run
against a live gateway (a real RabbitMQ vhost, a real worker), finds no server error
and no answer that breaks the document."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from openapi_spec_validator import validate

from ocho.gateway import openapi, schemas, submission
from ocho.gateway.app import create_app
from ocho.settings import Settings
from tests.infra import BIN, ROOT, Stack

IGNORED_METHODS = {"HEAD", "OPTIONS"}
HELLO = '''"""hello [NAME...]: say hello (a test tool)."""
import argparse
parser = argparse.ArgumentParser(prog="hello", description="Say hello.")
parser.add_argument("name", nargs="*")
args, rest = parser.parse_known_args()
print("hello", *args.name, *rest)
'''
FAIL = '''"""fail [WORD...]: print its words on stderr and exit 3 (a test tool)."""
import sys
if sys.argv[1:] == ["--help"]:
    print("usage: fail [WORD...]")
    sys.exit(0)
print(*sys.argv[1:], file=sys.stderr)
sys.exit(3)
'''
# Per-operation settings for the schemathesis run; see test_schemathesis_finds_nothing.
SCHEMATHESIS_CONFIG = '''
[[operations]]
include-name = "GET /jobs"
# `before` must name a job that exists (the `next` of an earlier page): a cursor that
# names none is a 400, and no schema can say which strings name a job.
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]
'''


def make_app(tmp_path: Path, **settings: Any) -> Flask:
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    (tools / "hello.py").write_text(HELLO)
    return create_app(Settings(database_url=f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
                               tools_dir=tools, **settings), background=False)


def flask_routes(app: Flask) -> set[tuple[str, str]]:
    """(METHOD, /openapi/{style}) for every rule the app serves."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes |= {(method, path) for method in rule.methods or () if method not in IGNORED_METHODS}
    return routes


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items()
            for method in item if method != "parameters"}


@pytest.mark.parametrize("tokens", [(), ("s3cret",)])
def test_the_document_is_valid_openapi(tmp_path: Path, tokens: tuple[str, ...]) -> None:
    app = make_app(tmp_path, tokens=tokens)
    headers = {"Authorization": "Bearer s3cret"} if tokens else {}
    response = app.test_client().get("/openapi.json", headers=headers)
    assert response.status_code == 200
    doc = response.get_json()
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"] == "3.1.0"
    # Made from the marshmallow schemas the handlers dump through.
    for name, schema in openapi.COMPONENTS.items():
        assert set(doc["components"]["schemas"][name]["properties"]) == set(schema().fields)
    assert doc["components"]["schemas"]["JobSubmit"]["properties"]["tool"]["enum"] == ["hello"]
    assert "bearerAuth" in doc["components"]["securitySchemes"]


def test_every_route_is_in_the_document_and_nothing_else(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    doc = app.test_client().get("/openapi.json").get_json()
    routes = flask_routes(app)
    for expected in [("POST", "/shell"), ("GET", "/tools"), ("GET", "/healthz"),
                     ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/"),
                     ("GET", "/openapi.json"), ("GET", "/jobs/{job_id}/events")]:
        assert expected in routes
    assert documented(doc) == routes


def test_with_tokens_the_document_says_which_calls_need_one(tmp_path: Path) -> None:
    """What the document says about credentials is what the gateway does."""
    app = make_app(tmp_path, tokens=("s3cret",))
    client = app.test_client()
    doc = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).get_json()
    assert doc["security"] == [{"bearerAuth": []}]
    for method, path in documented(doc):
        operation = doc["paths"][path][method.lower()]
        url = path.replace("{job_id}", "00000000-0000-4000-8000-000000000000")
        url = url.replace("{name}", "hello")
        answer = client.open(url, method=method, headers={"X-Shell": "help"})
        if operation.get("security") == []:
            assert answer.status_code != 401, (method, path)
            assert "401" not in operation["responses"]
        else:
            assert answer.status_code == 401, (method, path, answer.status_code)
            assert "401" in operation["responses"]
            assert answer.get_json()["error"]
    assert doc["paths"]["/shell"]["post"]["security"] == [{"bearerAuth": []},
                                                         {"shellSignature": []}]


def test_the_form_the_document_lists_is_the_one_the_gateway_reads() -> None:
    assert set(schemas.JobFormSchema().fields) == set(submission.FORM_FIELDS)


# -- schemathesis against the live portal -----------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    """Gateway and worker with two quick tools that follow the tool contract (a --help),
    and a 5 s time limit, so that POST /shell and ?wait= never hold a request long."""
    workdir = tmp_path_factory.mktemp("openapi")
    tools = workdir / "tools"
    tools.mkdir()
    (tools / "hello.py").write_text(HELLO)
    (tools / "fail.py").write_text(FAIL)
    stack = Stack(workdir, amqp_url, tools_dir=tools, default_timeout=5, max_timeout=5,
                  kill_grace=0.5)
    stack.start_gateway()
    stack.start_worker(concurrency=2)
    yield stack
    stack.stop()


def test_schemathesis_finds_nothing(live: Stack, tmp_path: Path) -> None:
    """Every phase (examples, coverage, fuzzing, stateful over the links) with every check:
    no 5xx, every answer as documented (status, content type, headers, body, events), what
    the document calls invalid is refused and what it calls valid is taken."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(textwrap.dedent(SCHEMATHESIS_CONFIG))
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.openapi_hooks",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [str(BIN / "schemathesis"), "--config-file", str(config), "--no-color", "run",
               f"{live.url}/openapi.json", "--checks", "all", "--max-examples", "25",
               "--workers", "2", "--request-timeout", "30", "--seed", str(_seed()),
               "--generation-database", "none", "--max-failures", "10"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    report = done.stdout + done.stderr
    (tmp_path / "report.txt").write_text(report)
    assert done.returncode == 0, f"{' '.join(command)}\n{report}"
    selected = re.search(r"Selected:\s+(\d+)/(\d+)", report)
    assert selected and selected[1] == selected[2], report
    assert re.search(rf"Tested:\s+{selected[1]}\b", report), report
    assert "Runtime Error" not in report, report
    assert time.monotonic() - started < 120
    # The portal is still sound after it: ready, and a real job still runs.
    assert requests.get(f"{live.url}/readyz", timeout=10).status_code == 200
    job = live.submit("hello", ["after", "fuzzing"])
    assert live.wait(job["id"])["state"] == "succeeded"
    assert live.output(job["id"])["data"] == "hello after fuzzing\n"


def _seed() -> int:
    """A fixed seed by default, so that a run is repeatable; OCHO_FUZZ_SEED=random explores."""
    value = os.environ.get("OCHO_FUZZ_SEED", "20240601")
    return int.from_bytes(os.urandom(4), "big") if value == "random" else int(value)

