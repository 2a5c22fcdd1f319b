"""Hostile HTTP clients against a tokenless gateway (what `make run` starts): no page
of another site can make it run anything (Host, Origin, forms), while its own page,
curl and the `ocho` CLI go on working; nested JSON and NUL are clean 400s on both
stores; log lines cannot be forged; the token settings refuse what would switch
auth off; YAML aliases are bounded by the bytes they expand to.

Browsers are played by `requests` sending what a browser sends (Origin, Referer,
Sec-Fetch-*, a Mozilla/… User-Agent): no browser is installed here.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ocho.errors import SettingsError
from ocho.gateway.app import create_app
from ocho.gateway.services import of
from ocho.kube import safeyaml
from ocho.settings import Settings
from tests import infra

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
EVIL = "http://attacker.example"
LONG_TOKEN = f"token-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def stack(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Stack]:
    tmp = tmp_path_factory.mktemp("hostile-http")
    stack = infra.Stack(tmp, amqp_url, tools_dir=infra.clone_tools_dir(tmp / "tools"))
    try:
        stack.start_gateway()
        stack.start_worker(concurrency=2)
        yield stack
    finally:
        stack.stop()


def job_count(stack: infra.Stack) -> int:
    return len(requests.get(f"{stack.url}/jobs", params={"limit": 500}, timeout=10)
               .json()["jobs"])


def post(stack: infra.Stack, path: str = "/jobs", **kwargs: Any) -> requests.Response:
    return requests.post(f"{stack.url}{path}", timeout=30, **kwargs)


def form(line: str) -> dict[str, Any]:
    """A multipart form as a browser's <form enctype="multipart/form-data"> sends it."""
    return {"files": {"line": (None, line)}}


def own_origin(stack: infra.Stack) -> str:
    return stack.url


# -- Host: DNS rebinding ----------------------------------------------------------------------


def test_a_foreign_host_is_refused_before_the_body_is_read(stack: infra.Stack) -> None:
    for method, path in (("GET", "/jobs"), ("GET", "/tools"), ("POST", "/jobs")):
        response = requests.request(method, f"{stack.url}{path}", timeout=10,
                                    headers={"Host": f"attacker.example:{stack.port}"},
                                    json={"tool": "args"})
        assert response.status_code == 421, (method, path, response.text)
        assert "OCHO_ALLOWED_HOSTS" in response.json()["error"]
    for host in (f"127.0.0.1:{stack.port}", f"localhost:{stack.port}", "localhost"):
        response = requests.get(f"{stack.url}/tools", headers={"Host": host}, timeout=10)
        assert response.status_code == 200, host
    # Headers announcing 30 MB, and no body at all: the answer comes from the head.
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: attacker.example\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 30000000\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 421 ")


def test_allowed_hosts_can_be_set_and_then_hold_with_tokens_too(tmp_path: Path,
                                                                amqp_url: str) -> None:
    settings = Settings(amqp_url=amqp_url, database_url=f"sqlite:///{tmp_path / 'db'}",
                        tokens=(LONG_TOKEN,), allowed_hosts=("portal.example", "other.example:1"))
    app = create_app(settings, background=False)
    try:
        client = app.test_client()
        assert client.get("/healthz", headers={"Host": "portal.example:8443"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "other.example"}).status_code == 421
        assert client.get("/healthz", headers={"Host": "other.example:1"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "other.example:2"}).status_code == 421
    finally:
        of(app).stop()


# -- Origin and forms: CSRF -------------------------------------------------------------------


def test_cross_site_posts_are_refused_and_nothing_runs(stack: infra.Stack) -> None:
    before = job_count(stack)
    attempts = {
        "form from another origin": dict(form("args pwned"), headers={
            "Origin": EVIL, "User-Agent": BROWSER, "Sec-Fetch-Site": "cross-site"}),
        "no-cors text/plain fetch": dict(data='{"tool": "args", "args": ["pwned"]}', headers={
            "Origin": EVIL, "User-Agent": BROWSER, "Content-Type": "text/plain"}),
        "sandboxed frame (Origin: null)": dict(form("args pwned"), headers={
            "Origin": "null", "User-Agent": BROWSER}),
        "JSON from another origin": dict(json={"tool": "args"}, headers={
            "Origin": EVIL, "User-Agent": BROWSER}),
        "same host, another port": dict(form("args pwned"), headers={
            "Origin": "http://127.0.0.1:1", "User-Agent": BROWSER, "X-Ocho-Client": "web"}),
    }
    for what, kwargs in attempts.items():
        response = post(stack, **kwargs)
        assert response.status_code == 403, (what, response.text)
        assert "cross-origin" in response.json()["error"], what
    old_browser = {  # no Origin, no Referer (referrer policy no-referrer), a browser's UA
        "form": dict(form("args pwned"), headers={"User-Agent": BROWSER}),
        "text/plain": dict(data="{}", headers={"User-Agent": BROWSER,
                                               "Content-Type": "text/plain"}),
        "untyped blob": dict(data=b"{}", headers={"User-Agent": BROWSER, "Content-Type": ""}),
        "urlencoded": dict(data={"line": "args pwned"}, headers={"User-Agent": BROWSER}),
    }
    for what, kwargs in old_browser.items():
        response = post(stack, **kwargs)
        assert response.status_code == 403, (what, response.text)
        assert "X-Ocho-Client" in response.json()["error"], what
    job = post(stack, json={"tool": "args", "args": ["victim"]}).json()
    cancel = post(stack, f"/jobs/{job['id']}/cancel",
                  headers={"Origin": EVIL, "User-Agent": BROWSER})
    assert cancel.status_code == 403
    shell = post(stack, "/shell", headers={"Origin": EVIL, "X-Shell": "args pwned"})
    assert shell.status_code == 403
    assert job_count(stack) == before + 1  # only the victim job
    assert stack.wait(job["id"])["state"] == "succeeded"  # and it was not cancelled


def test_the_page_curl_and_the_cli_still_submit(stack: infra.Stack, tmp_path: Path) -> None:
    page = post(stack, **form("args from the page"), headers={
        "Origin": own_origin(stack), "User-Agent": BROWSER, "Sec-Fetch-Site": "same-origin",
        "X-Ocho-Client": "web"})
    assert page.status_code == 202, page.text
    also_localhost = post(stack, **form("args by name"), headers={
        "Origin": f"http://localhost:{stack.port}", "Host": f"localhost:{stack.port}",
        "User-Agent": BROWSER, "X-Ocho-Client": "web"})
    assert also_localhost.status_code == 202, also_localhost.text
    curl = post(stack, **form("args from curl"), headers={"User-Agent": "curl/8.5.0"})
    assert curl.status_code == 202, curl.text
    for job in (page.json(), also_localhost.json(), curl.json()):
        assert stack.wait(job["id"])["state"] == "succeeded"
    (tmp_path / "def.yml").write_text("x: 1\n")
    done = subprocess.run([str(infra.BIN / "ocho"), "args", "def.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**stack.env, "OCHO_URL": stack.url})
    assert done.returncode == 0, done.stderr
    assert "def.yml" in done.stdout
    # The original portal's client: multipart to /shell with only X-Shell.
    original = post(stack, "/shell", headers={"X-Shell": "args old"},
                    files={"a.yml": ("a.yml", b"x")})
    assert original.status_code == 200 and original.json()["ok"], original.text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ATTACK_PAGE = """<!doctype html><html><head><meta name="referrer" content="no-referrer"></head>
<body>
<form id="gateway" method="POST" action="{gateway}/jobs" enctype="multipart/form-data"
      target="one"><input name="line" value="args csrf-form"></form>
<form id="control" method="POST" action="/control-form" target="two">
  <input name="x" value="1"></form>
<iframe name="one"></iframe><iframe name="two"></iframe>
<script>
document.getElementById("gateway").submit();
document.getElementById("control").submit();
const attack = {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                body: '{{"tool": "args", "args": ["csrf-fetch"]}}'}};
fetch("{gateway}/jobs", attack).catch(() => null)
  .then(() => fetch("/control-fetch", attack));
</script></body></html>"""


class AttackerSite:
    """Another origin (another port of 127.0.0.1) serving ATTACK_PAGE; it records the
    control requests the page sends to itself, which prove the browser ran it."""

    def __init__(self, gateway: str) -> None:
        page = ATTACK_PAGE.format(gateway=gateway).encode()
        self.received: list[str] = []
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(page)

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_a_real_browser_on_another_site_cannot_submit(stack: infra.Stack, tmp_path: Path) -> None:
    site = AttackerSite(stack.url)
    try:
        assert CHROMIUM is not None
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
             "--virtual-time-budget=5000", "--dump-dom", site.url],
            capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-2000:]
        infra.wait_for(lambda: len(site.received) == 2, timeout=10,
                       what="the attack page's control requests")
    finally:
        site.close()
    assert sorted(site.received) == ["/control-fetch", "/control-form"]  # the page ran
    jobs = requests.get(f"{stack.url}/jobs", params={"limit": 500}, timeout=10).json()["jobs"]
    assert not [job for job in jobs if any(a.startswith("csrf-") for a in job["args"])]


# -- bodies and parameters --------------------------------------------------------------------


def test_nested_json_is_a_400_naming_the_depth_limit(stack: infra.Stack) -> None:
    deep_args = '{"tool": "args", "args": ' + "[" * 5000 + "]" * 5000 + "}"
    for body in ("[" * 100_000, '{"a":' * 100_000, deep_args):
        response = post(stack, data=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text[:200]
        assert "nested more than 32 levels" in response.json()["error"]
    multipart = post(stack, files={"tool": (None, "args"), "args": (None, "[" * 100_000)})
    assert multipart.status_code == 400
    assert multipart.json()["field"] == "args"
    assert "nested more than 32 levels" in multipart.json()["error"]


NUL_GETS = ["/jobs/%00", f"/jobs/{uuid.uuid4()}%00", f"/jobs/{uuid.uuid4()}/output?x=%00",
            "/jobs?tool=ar%00gs", "/jobs?before=%00", "/jobs?state=queued%00",
            "/tools/ar%00gs"]
NUL_BODIES: list[dict[str, Any]] = [
    {"json": {"tool": "ar\0gs"}}, {"json": {"tool": "args", "id": f"{uuid.uuid4()}\0"}},
    {"json": {"tool": "args", "args": ["a\0b"]}},
    {"json": {"tool": "args", "correlation_id": "c\0"}},
    {"files": {"line": (None, "args a\0b")}}, {"files": {"tool": (None, "ar\0gs")}},
    {"files": {"tool": (None, "args"), "id": (None, "\0")}},
]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_nul_anywhere_is_a_400_on_both_stores(tmp_path: Path, amqp_url: str, database: str,
                                              request: pytest.FixtureRequest) -> None:
    url = (request.getfixturevalue("pg_url") if database == "postgresql"
           else f"sqlite:///{tmp_path / 'db'}")
    tools = infra.clone_tools_dir(tmp_path / "tools")
    app = create_app(Settings(amqp_url=amqp_url, database_url=url, tools_dir=tools),
                     background=False)
    try:
        client = app.test_client()
        for path in NUL_GETS:
            response = client.get(path)
            assert response.status_code == 400, (path, response.text)
            assert "NUL" in response.json["error"], path
        for kwargs in NUL_BODIES:
            kwargs = dict(kwargs)
            if "files" in kwargs:
                kwargs = {"data": {k: v[1] for k, v in kwargs["files"].items()},
                          "content_type": "multipart/form-data"}
            response = client.post("/jobs", **kwargs)
            assert response.status_code == 400, (kwargs, response.text)
    finally:
        of(app).stop()


# -- logs -------------------------------------------------------------------------------------


def test_an_argument_cannot_forge_a_log_line(stack: infra.Stack) -> None:
    forged = "2026-01-01 00:00:00,000 ERROR gateway: FORGED"
    job = post(stack, json={"tool": "args", "args": [f"x\n{forged}", "\x1b[2J\r"]}).json()
    assert stack.wait(job["id"])["state"] == "succeeded"
    for name in ("gateway.log", "worker0.log"):
        lines = stack.read_log(name).splitlines()
        assert not any(line.startswith(forged) for line in lines), name
        assert not any("\x1b" in line or "\r" in line for line in lines), name
    submitted = [line for line in stack.read_log("gateway.log").splitlines()
                 if job["id"] in line and "submitted" in line]
    assert submitted and "\\n" + forged in submitted[0] and "\\x1b[2J\\r" in submitted[0]


# -- settings ---------------------------------------------------------------------------------


def test_tokens_that_would_switch_auth_off_or_are_guessable_are_refused(
        tmp_path: Path) -> None:
    for tokens in (" , ,", f"{LONG_TOKEN},", f"{LONG_TOKEN}, ,{LONG_TOKEN}x", "  "):
        with pytest.raises(SettingsError, match="OCHO_TOKENS: token . is empty"):
            Settings.from_env({"OCHO_TOKENS": tokens})
    with pytest.raises(SettingsError, match="OCHO_TOKENS: token 2 is shorter than 16"):
        Settings.from_env({"OCHO_TOKENS": f"{LONG_TOKEN},x"})
    token_file = tmp_path / "tokens"
    token_file.write_text("short\n")
    with pytest.raises(SettingsError, match="OCHO_TOKEN_FILE: token 1 is shorter than 16"):
        Settings.from_env({"OCHO_TOKEN_FILE": str(token_file)})
    assert Settings.from_env({"OCHO_TOKENS": ""}).tokens == ()  # compose's default: none
    done = subprocess.run([str(infra.BIN / "ocho-gateway")], capture_output=True, text=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin", "OCHO_TOKENS": " , ,"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "OCHO_TOKENS" in done.stderr
    assert LONG_TOKEN not in done.stderr


# -- YAML -------------------------------------------------------------------------------------


def test_yaml_aliases_are_bounded_by_the_bytes_they_expand_to() -> None:
    # 61 KB: one 60 000-character string named 330 times would be 20 MB printed.
    text = "a: &a " + "x" * 60_000 + "\nb: [" + ", ".join(["*a"] * 330) + "]\n"
    assert 60_000 < len(text) < 62_000
    began = time.monotonic()
    with pytest.raises(safeyaml.YamlProblem, match="aliases expand to more than 1024 KiB"):
        safeyaml.loads(text)
    assert time.monotonic() - began < 1
    small = safeyaml.loads("a: &a " + "x" * 1000 + "\nb: [*a, *a, *a]\n")
    assert small["b"] == ["x" * 1000] * 3
    assert json.dumps(small)  # plain data
