"""Safe to expose: tokens and signatures, no shell, safe uploads, caps, safe YAML,
the tools' environment and limits, AMQP requests checked like HTTP ones, secrets
out of the logs — against a real gateway and a real worker, as an attacker would
reach them.

The stack runs as it should be deployed: tokens from OCHO_TOKENS and from
OCHO_TOKEN_FILE, and the gateway and the worker connect to RabbitMQ as two users
with passwords and the least-privilege permissions the README gives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import shlex
import socket
import subprocess
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from ocho import topology
from ocho.errors import SettingsError
from ocho.gateway import server
from ocho.kube import safeyaml
from ocho.settings import Settings
from tests import infra

ROOT = Path(__file__).resolve().parent.parent
TOKEN = f"tok-{uuid.uuid4().hex}"
FILE_TOKEN = f"filetok-{uuid.uuid4().hex}"  # only in OCHO_TOKEN_FILE
GATEWAY_PASSWORD = f"gwpw-{uuid.uuid4().hex}"
WORKER_PASSWORD = f"wkpw-{uuid.uuid4().hex}"
SECRETS = (TOKEN, FILE_TOKEN, GATEWAY_PASSWORD, WORKER_PASSWORD)

MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_FILE_BYTES = 1024 * 1024
MAX_FILES = 8
MiB = 1024 * 1024

# The README's least-privilege permissions (configure, write, read).
GATEWAY_PERMISSIONS = (r"^ocho\.", r"^ocho\.(jobs|dead|recorder|control|control\.log)$",
                       r"^ocho\.")
WORKER_PERMISSIONS = (r"^ocho\.", r"^(ocho\..*|amq\.default)$",
                      r"^ocho\.(jobs|dead|events|control|control\.log)$")

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]"
       for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["cluster: lol", "image: lol"]) + "\n"


class Portal:
    """The HTTP client an outsider would be, with or without a credential."""

    def __init__(self, stack: infra.Stack) -> None:
        self.stack = stack
        self.url = stack.url

    def call(self, method: str, path: str, token: str | None = TOKEN,
             **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, f"{self.url}{path}", headers=headers,
                                timeout=kwargs.pop("timeout", 30), **kwargs)

    def submit(self, **kwargs: Any) -> requests.Response:
        return self.call("POST", "/jobs", **kwargs)

    def wait(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            response = self.call("GET", f"/jobs/{job_id}", params={"wait": 10})
            if response.status_code == 404 and time.monotonic() < deadline:
                time.sleep(0.05)  # sent over AMQP: the gateway learns of it from events
                continue
            job = response.json()
            if job["state"] not in ("queued", "running") or time.monotonic() > deadline:
                return job

    def output(self, job_id: str) -> str:
        return self.call("GET", f"/jobs/{job_id}/output").json()["data"]

    def run(self, **kwargs: Any) -> tuple[dict[str, Any], str]:
        response = self.submit(**kwargs)
        assert response.status_code == 202, response.text
        job = self.wait(response.json()["id"])
        return job, self.output(job["id"])


@pytest.fixture(scope="module")
def stack(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Stack]:
    vhost = amqp_url.rsplit("/", 1)[1]
    suffix = uuid.uuid4().hex[:8]
    users = {f"ocho-gw-{suffix}": (GATEWAY_PASSWORD, GATEWAY_PERMISSIONS),
             f"ocho-wk-{suffix}": (WORKER_PASSWORD, WORKER_PERMISSIONS)}
    for user, (password, permissions) in users.items():
        infra.rabbitmqctl("add_user", user, password)
        infra.rabbitmqctl("set_permissions", "-p", vhost, user, *permissions)
    gateway_url, worker_url = (f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"
                               for user, (password, _) in users.items())
    tmp = tmp_path_factory.mktemp("security")
    token_file = tmp / "tokens"
    token_file.write_text(f"# API tokens\n\n{FILE_TOKEN}\n")
    stack = infra.Stack(
        tmp, gateway_url, tools_dir=infra.clone_tools_dir(tmp / "tools"),
        tokens=TOKEN, token_file=token_file,
        max_request_bytes=MAX_REQUEST_BYTES, max_file_bytes=MAX_FILE_BYTES, max_files=MAX_FILES,
        tool_memory_bytes=512 * MiB, tool_max_processes=32, kill_grace=1, shutdown_grace=2)
    try:
        stack.start_gateway()
        stack.start_worker(concurrency=2, OCHO_AMQP_URL=worker_url)
        yield stack
    finally:
        stack.stop()
        for user in users:
            subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True,
                           timeout=60)


@pytest.fixture(scope="module")
def portal(stack: infra.Stack) -> Portal:
    return Portal(stack)


def argv_of(output: str) -> dict[str, Any]:
    """What tests/tools/args.py printed: its argv and the files of its directory."""
    return json.loads(output.strip().splitlines()[-1])


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"sEcUrItY") -> tuple[
        bytes, str]:
    """A multipart body from raw (Content-Disposition parameters, content) pairs, byte for
    byte: what a hostile client can send that a polite library would escape."""
    body = b""
    for disposition, content in parts:
        body += (b"--" + boundary + b"\r\nContent-Disposition: form-data; " + disposition
                 + b"\r\n\r\n" + content + b"\r\n")
    body += b"--" + boundary + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary.decode()}"


def file_part(name: bytes, content: bytes = b"x", field: bytes = b"f") -> tuple[bytes, bytes]:
    return b'name="' + field + b'"; filename="' + name + b'"', content


def field_part(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return b'name="' + name + b'"', value


def readme_block(language: str, marker: str) -> str:
    """The fenced `language` block of the README's Security section holding `marker`."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Security\n"):]
    for block in re.findall(rf"```{language}\n(.*?)```", section, flags=re.S):
        if marker in block:
            return block
    raise AssertionError(f"no {language} block with {marker!r} in the README's Security section")


# -- 1. credentials -----------------------------------------------------------------------------


PROTECTED = [("GET", "/jobs"), ("POST", "/jobs"), ("GET", f"/jobs/{uuid.uuid4()}"),
             ("GET", f"/jobs/{uuid.uuid4()}/output"), ("POST", f"/jobs/{uuid.uuid4()}/cancel"),
             ("GET", "/tools"), ("GET", "/tools/args"), ("POST", "/shell"), ("GET", "/readyz"),
             ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/no/such/path"),
             ("DELETE", "/healthz")]


def test_every_call_but_healthz_and_the_page_needs_a_token(portal: Portal) -> None:
    assert portal.call("GET", "/healthz", token=None).status_code == 200
    page = portal.call("GET", "/", token=None)
    assert page.status_code == 200 and "<html" in page.text.lower()  # static; asks for a token
    for method, path in PROTECTED:
        for credential in (None, {"Authorization": "Bearer"}, {"Authorization": "Bearer wrong"},
                           {"Authorization": f"Bearer {TOKEN[:-1]}"},
                           {"Authorization": f"Bearer {TOKEN}x"},
                           {"Authorization": f"Basic {TOKEN}"},
                           {"Authorization": TOKEN},
                           {"X-Signature": "sha256=" + "0" * 64}):
            response = portal.call(method, path, token=None, headers=credential,
                                   json={"tool": "args"})
            assert response.status_code == 401, (method, path, credential, response.text)
            assert response.headers["Content-Type"] == "application/json"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "token" in response.json()["error"]
    for path in ("/readyz", "/metrics", "/openapi.json", "/tools", "/jobs"):
        assert portal.call("GET", path).status_code == 200, path


def test_a_good_token_from_the_variable_or_the_file_is_accepted(portal: Portal) -> None:
    for token in (TOKEN, FILE_TOKEN):
        response = portal.submit(token=token, json={"tool": "args", "args": ["hi"]})
        assert response.status_code == 202, response.text
        job = portal.wait(response.json()["id"])
        assert job["state"] == "succeeded"
    lower_scheme = portal.call("GET", "/jobs", token=None,
                               headers={"Authorization": f"bearer {TOKEN}"})
    assert lower_scheme.status_code == 200


def test_without_tokens_the_gateway_says_how_exposed_it_is(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    server._log_exposure(Settings())
    assert "listening on loopback only" in caplog.text
    caplog.clear()
    server._log_exposure(Settings(bind="0.0.0.0:9000"))
    assert caplog.records[0].levelno == logging.WARNING
    assert "anyone who can reach it can run tools" in caplog.text
    caplog.clear()
    server._log_exposure(Settings(bind="0.0.0.0:9000", tokens=(TOKEN,)))
    assert "every call but /healthz and the page at / needs one" in caplog.text


def test_token_settings_read_the_file_once_and_refuse_a_bad_one(tmp_path: Path) -> None:
    zero, one, two = (f"{word}-{uuid.uuid4().hex}" for word in ("zero", "one", "two"))
    path = tmp_path / "tokens"
    path.write_text(f"# comment\n {one} \n\n{two}\n")
    settings = Settings.from_env({"OCHO_TOKENS": zero, "OCHO_TOKEN_FILE": str(path)})
    path.write_text("three\n")  # read at start only
    assert settings.tokens == (zero, one, two)
    path.write_text("# only a comment\n")
    with pytest.raises(SettingsError, match="holds no token"):
        Settings.from_env({"OCHO_TOKEN_FILE": str(path)})
    with pytest.raises(SettingsError, match="cannot be read"):
        Settings.from_env({"OCHO_TOKEN_FILE": str(tmp_path / "missing")})


def sign(token: str, line: bytes, files: dict[str, bytes], query: bytes = b"",
         correlation_id: bytes = b"", timestamp: float | None = None) -> dict[str, Any]:
    """The headers of a signed POST /shell, computed independently of the gateway's code."""
    stamp = str(int(time.time() if timestamp is None else timestamp)).encode()
    message = b"".join(part + b"\n" for part in (stamp, query, correlation_id, line))
    for name in sorted(files, key=str.encode):
        message += name.encode() + b"\n" + hashlib.sha256(files[name]).hexdigest().encode() + b"\n"
    signature = "sha256=" + hmac.new(token.encode(), message, hashlib.sha256).hexdigest()
    headers = {"X-Signature": signature, "X-Signature-Timestamp": stamp}
    return headers | ({"X-Correlation-Id": correlation_id} if correlation_id else {})


def shell(portal: Portal, line: bytes, files: dict[str, bytes], query: str = "",
          **headers: Any) -> requests.Response:
    upload = {name: (name, content) for name, content in files.items()}
    path = f"/shell?{query}" if query else "/shell"
    return portal.call("POST", path, token=None, timeout=60, files=upload or None,
                       headers={"X-Shell": line, **{k.replace("_", "-"): v
                                                    for k, v in headers.items()}})


def signed_shell(portal: Portal, line: bytes, files: dict[str, bytes], signed: dict[str, Any],
                 query: str = "", **headers: Any) -> requests.Response:
    return shell(portal, line, files, query, **{k.replace("-", "_"): v
                                                for k, v in {**signed, **headers}.items()})


def test_shell_takes_a_signature_over_the_line_and_every_file(portal: Portal) -> None:
    line = b"args one 'two words'"
    files = {"a.yml": b"alpha\n", "b.yml": b"beta\n"}
    good = sign(TOKEN, line, files)
    assert shell(portal, line, files).status_code == 401  # no credential at all
    refused = {
        "garbage": {**good, "X-Signature": "sha256=nothex"},
        "no prefix": {**good, "X-Signature": good["X-Signature"].removeprefix("sha256=")},
        "other algorithm": {**good, "X-Signature": "sha1=" + good["X-Signature"][7:]},
        "wrong key": sign("not-a-token", line, files),
        "the line only": sign(TOKEN, line, {}),
        "another line": sign(TOKEN, b"args one", files),
        "a file swapped": sign(TOKEN, line, {**files, "b.yml": b"evil\n"}),
        "a file renamed": sign(TOKEN, line, {"a.yml": files["a.yml"], "c.yml": files["b.yml"]}),
        "a file missing": sign(TOKEN, line, {"a.yml": files["a.yml"]}),
    }
    for what, signed in refused.items():
        response = signed_shell(portal, line, files, signed)
        assert response.status_code == 401, (what, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "X-Signature" in response.json()["error"]
    # Signed for these files, sent with one swapped: refused, and nothing ran.
    assert signed_shell(portal, line, {**files, "b.yml": b"evil\n"}, good).status_code == 401
    # Signed right, with either token: the job runs with those files.
    for token in (TOKEN, FILE_TOKEN):
        signed = sign(token, line, files)
        signed["X-Signature"] = signed["X-Signature"].upper().replace("SHA256=", "sha256=")
        response = signed_shell(portal, line, files, signed)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["ok"], answer
        seen = argv_of(answer["out"])
        assert seen["argv"] == ["one", "two words"]
        assert set(seen["files"]) == {"a.yml", "b.yml", "args.py"}


def test_a_signature_covers_query_and_correlation_id_and_is_good_once(portal: Portal) -> None:
    line = b"args once"
    signed = sign(TOKEN, line, {}, query=b"timeout=30", correlation_id=b"c-1")
    changed = {"another timeout": ("timeout=1500", {}),
               "no timeout": ("", {}),
               "another correlation id": ("timeout=30", {"X-Correlation-Id": "c-2"})}
    for what, (query, headers) in changed.items():
        response = signed_shell(portal, line, {}, signed, query, **headers)
        assert response.status_code == 401, (what, response.text)
        assert "does not match" in response.json()["error"]
    first = signed_shell(portal, line, {}, signed, "timeout=30")
    assert first.status_code == 200 and first.json()["ok"], first.text
    job = portal.call("GET", f"/jobs/{first.json()['id']}").json()
    assert job["timeout"] == 30
    again = signed_shell(portal, line, {}, signed, "timeout=30")
    assert again.status_code == 401 and "already used" in again.json()["error"]
    # Upper-case hex is the same signature: no second use either.
    upper = {**signed, "X-Signature": "sha256=" + signed["X-Signature"][7:].upper()}
    assert signed_shell(portal, line, {}, upper, "timeout=30").status_code == 401


def test_a_signature_is_good_only_within_its_window(portal: Portal) -> None:
    line = b"args late"
    for what, signed in {"too old": sign(TOKEN, line, {}, timestamp=time.time() - 400),
                         "from the future": sign(TOKEN, line, {}, timestamp=time.time() + 400),
                         "no timestamp": {"X-Signature": sign(TOKEN, line, {})["X-Signature"]},
                         "not a number": {**sign(TOKEN, line, {}),
                                          "X-Signature-Timestamp": "yesterday"}}.items():
        response = signed_shell(portal, line, {}, signed)
        assert response.status_code == 401, (what, response.text)
        assert "OCHO_SIGNATURE_MAX_AGE" in response.json()["error"], what
    within = signed_shell(portal, line, {}, sign(TOKEN, line, {}, timestamp=time.time() - 200))
    assert within.status_code == 200, within.text


def test_the_x_shell_line_is_checked_byte_for_byte(portal: Portal) -> None:
    # Signed with a trailing space: the very bytes sent verify, and that line runs.
    line = b"args 'end\\' \\ "
    response = signed_shell(portal, line, {}, sign(TOKEN, line, {}))
    assert response.status_code == 200, response.text
    assert argv_of(response.json()["out"])["argv"] == ["end\\", " "]
    # Signed without the trailing space, sent with it (or the reverse): refused.
    for signed_line, sent in ((b"args x", b"args x  "), (b"args x ", b"args x")):
        response = signed_shell(portal, sent, {}, sign(TOKEN, signed_line, {}))
        assert response.status_code == 401, (signed_line, sent)


def test_the_readme_recipes_sign_as_the_gateway_checks(portal: Portal, tmp_path: Path) -> None:
    files = {"zoo keeper.yml": b"cluster: zoo\n", "Redis.yml": b"x: 1\n", "é.yml": b"\xc3\xa9\n"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    line = "args deploy 'zoo keeper.yml' Redis.yml é.yml café"
    script = readme_block("sh", "openssl dgst")
    done = subprocess.run(["bash", "-c", script, "shell-signed.sh", line, *files],
                          cwd=tmp_path, capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OCHO_URL": portal.url,
                               "OCHO_TOKEN": FILE_TOKEN, "QUERY": "timeout=45",
                               "CORRELATION_ID": "readme-1"})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["ok"], answer
    assert argv_of(answer["out"])["argv"] == ["deploy", "zoo keeper.yml", "Redis.yml", "é.yml",
                                              "café"]
    job = portal.call("GET", f"/jobs/{answer['id']}").json()
    assert job["timeout"] == 45
    namespace: dict[str, Any] = {}
    exec(readme_block("python", "def sign("), namespace)  # noqa: S102 - our own README
    headers = namespace["sign"](FILE_TOKEN, line, files, query="timeout=45",
                                correlation_id="readme-2")
    stamp = float(headers["X-Signature-Timestamp"])
    expected = {"X-Shell": line.encode(), **sign(
        FILE_TOKEN, line.encode(), files, b"timeout=45", b"readme-2", timestamp=stamp)}
    assert headers == {k: v if isinstance(v, bytes) else v.encode() for k, v in expected.items()}
    upload = {name: (name, content) for name, content in files.items()}
    response = requests.post(f"{portal.url}/shell?timeout=45", headers=headers, files=upload,
                             timeout=60)
    assert response.status_code == 200 and response.json()["ok"], response.text


# -- 2. no shell ------------------------------------------------------------------------------


@pytest.fixture
def canary() -> Iterator[Path]:
    path = Path(f"/tmp/ocho-canary-{uuid.uuid4().hex}")
    yield path
    assert not path.exists(), f"{path} was created: something ran a shell"


def attacks(canary: Path) -> list[str]:
    c = str(canary)
    return [f"; touch {c}", f"&& touch {c}", f"|| touch {c}", f"| touch {c}", f"$(touch {c})",
            f"`touch {c}`", f"\ntouch {c}", f"\r\ntouch {c}", f"> {c}", f">{c}", f"<(touch {c})",
            f"'; touch {c}; '", f"\"; touch {c}; \"", f"../../../../usr/bin/touch {c}",
            "${IFS}", "$HOME", "*", "~", "-rf /", "--help"]


def test_injected_arguments_reach_the_tool_as_literal_text(portal: Portal, canary: Path) -> None:
    args = attacks(canary)
    job, out = portal.run(json={"tool": "args", "args": args})
    assert job["state"] == "succeeded", out
    assert argv_of(out)["argv"] == args
    # The same through multipart `tool` + `args`.
    job, out = portal.run(data={"tool": "args", "args": json.dumps(args)},
                          files={"x.txt": ("x.txt", b"x")})
    assert argv_of(out)["argv"] == args


def test_injected_command_lines_are_split_never_run(portal: Portal, canary: Path) -> None:
    c = str(canary)
    lines = [f"args ; touch {c}", f"args && touch {c} || touch {c} | touch {c}",
             f"args $(touch {c}) `touch {c}` > {c}", f"args x\ntouch {c}", f"args\ttouch {c}",
             f"args '$(touch {c})' \"`touch {c}`\" ../../x", f"args --x=$(touch {c});"]
    for line in lines:
        job, out = portal.run(data={"line": line}, files={"x.txt": ("x.txt", b"x")})
        assert job["state"] == "succeeded", out
        assert argv_of(out)["argv"] == shlex.split(line)[1:], line
        if "\n" not in line:
            response = shell(portal, line.encode(), {}, Authorization=f"Bearer {TOKEN}")
            assert response.status_code == 200 and response.json()["ok"], response.text
            assert argv_of(response.json()["out"])["argv"] == shlex.split(line)[1:]
    for line in (f"args 'unbalanced ; touch {c}", f"args \"$(touch {c})"):
        response = portal.submit(data={"line": line}, files={"x.txt": ("x.txt", b"x")})
        assert response.status_code == 400 and response.json()["field"] == "line"
        response = shell(portal, line.encode(), {}, Authorization=f"Bearer {TOKEN}")
        # As the original answered a line it could not run: 200, ok false, nothing ran.
        assert response.status_code == 200 and response.json()["field"] == "X-Shell"
        assert response.json()["ok"] is False and "id" not in response.json()


def test_a_tool_name_can_only_name_a_tool_of_the_catalog(portal: Portal, canary: Path) -> None:
    c = str(canary)
    names = [f"args; touch {c}", f"touch {c}", "touch", "sh", "/bin/sh", "../args", "./args",
             "tools/args", "args/../args", "args.py", "ARGS", "\u0430rgs", "ａｒｇｓ", "args\n",
             "args\x00", " args", "args ", "_args", "-args", "", "a" * 65, "args\u200b", "..",
             "%2e%2e%2fargs", "args\\"]
    for name in names:
        response = portal.submit(json={"tool": name, "args": [c]})
        assert response.status_code == 400, (name, response.text)
        assert response.json()["field"] == "tool"
        response = portal.submit(data={"tool": name, "args": "[]"},
                                 files={"x.txt": ("x.txt", b"x")})
        assert response.status_code == 400, (name, response.text)
    for line in (f"/bin/sh -c 'touch {c}'", f"touch {c}", f"../../bin/touch {c}",
                 f"sh -c 'touch {c}'", f"xargs touch {c}", f"nohup touch {c}"):
        response = portal.submit(data={"line": line}, files={"x.txt": ("x.txt", b"x")})
        assert response.status_code == 400, (line, response.text)
        answer = shell(portal, line.encode(), {}, Authorization=f"Bearer {TOKEN}")
        # The original portal's contract: an unknown command is an answer, not an error.
        assert answer.status_code == 200 and not answer.json()["ok"], answer.text
        assert "unknown command" in answer.json()["out"]
    assert portal.call("GET", "/tools/..%2Fargs").status_code == 404
    assert portal.call("GET", "/tools/ARGS").status_code == 404


# -- 3. uploads -------------------------------------------------------------------------------


def escape_target() -> Path:
    return Path(f"/tmp/ocho-escape-{uuid.uuid4().hex}")


BAD_NAMES = ["../x", "/etc/passwd", "a/b", ".hidden", ".", "..", "x\\y", "a\x00b", "a\nb",
             "a\x1bb", "\u202eevil", "args.py", "n" * 256, "é" * 128]


def test_odd_upload_names_are_refused_and_nothing_leaves_the_job_dir(portal: Portal) -> None:
    target = escape_target()
    names = [*BAD_NAMES, f"../../../../..{target}", str(target), f"..\\..\\{target.name}"]
    for name in names:
        body = {"tool": "args", "files": {name: base64.b64encode(b"pwned").decode()}}
        response = portal.submit(json=body)
        assert response.status_code == 400, (name, response.text)
        assert response.json()["field"].startswith("files"), response.json()
        # Multipart, the name exactly as a hostile client puts it in the part's header.
        raw_name = name.encode().replace(b"\\", b"\\\\")
        for part in (file_part(raw_name, b"pwned"), file_part(b"", b"pwned", field=raw_name)):
            data, content_type = multipart([field_part(b"line", b"args"), part])
            response = portal.submit(data=data, headers={"Content-Type": content_type})
            assert response.status_code == 400, (name, part, response.text)
        # /shell names files by their field; a part its parser cannot take for a file
        # (a newline cuts the header short) is a text field, ignored as the original did.
        data, content_type = multipart([file_part(b"x", b"pwned", field=raw_name)])
        response = portal.call("POST", "/shell", data=data,
                               headers={"Content-Type": content_type, "X-Shell": "args"})
        assert response.status_code == 400 or set(
            argv_of(response.json()["out"])["files"]) == {"args.py"}, (name, response.text)
    assert not target.exists()
    assert not Path("/etc/passwd").read_bytes().startswith(b"pwned")


def test_uploads_are_new_plain_private_files_in_a_private_dir(portal: Portal) -> None:
    files = {"é.txt": b"1", "a b.yml": b"2", "-rf": b"3", "x..y": b"4", "~": b"5", "n" * 255: b"6",
             "é" * 127: b"7", "$(touch x)": b"8"}
    job, out = portal.run(data={"line": "args"},
                          files=[(name, (name, content)) for name, content in files.items()])
    assert job["state"] == "succeeded", out
    seen = argv_of(out)
    assert set(seen["files"]) == {*files, "args.py"}
    for name in files:
        assert seen["files"][name] == {"kind": "file", "mode": "0o600"}
    assert seen["dir_mode"] == "0o700"


def test_a_tool_reads_only_the_jobs_own_files(portal: Portal, stack: infra.Stack) -> None:
    # deploy prints what it could not parse: given the worker's files, it would print them.
    assert stack.workers
    worker_environ = f"/proc/{stack.workers[0].pid}/environ"
    job, out = portal.run(data={"line": f"deploy --dry-run /etc/passwd ../../../../etc/passwd "
                                        f"{worker_environ} '/proc/*/environ' zk.yml "
                                        "-o /etc/hostname"},
                          files={"zk.yml": ("zk.yml", b"cluster: zk\nimage: zk\n")})
    assert job["state"] == "failed", out
    assert out.count("only the job's own files can be read") == 5, out
    assert "root:" not in out and "OCHO_" not in out
    assert not any(secret in out for secret in SECRETS)
    job, out = portal.run(data={"line": "deploy --dry-run '*.yml'"},
                          files={"zk.yml": ("zk.yml", b"cluster: zk\nimage: zk\n")})
    assert job["state"] == "succeeded" and "ReplicationController" in out, out


def test_upload_caps_are_413(portal: Portal) -> None:
    too_many = portal.submit(data={"line": "args"},
                             files=[("f", (f"f{i}", b"x")) for i in range(MAX_FILES + 1)])
    assert too_many.status_code == 413 and too_many.json()["field"] == "files"
    too_big = portal.submit(data={"line": "args"},
                            files={"big": ("big", b"x" * (MAX_FILE_BYTES + 1))})
    assert too_big.status_code == 413 and too_big.json()["field"] == "files.big"
    over_request = portal.submit(data={"line": "args"},
                                 files={f"f{i}": (f"f{i}", b"x" * MAX_FILE_BYTES)
                                        for i in range(5)})
    assert over_request.status_code == 413
    assert "OCHO_MAX_REQUEST_BYTES" in over_request.json()["error"]
    in_json = portal.submit(json={"tool": "args", "files": {
        f"f{i}": base64.b64encode(b"x" * 10).decode() for i in range(MAX_FILES + 1)}})
    assert in_json.status_code == 413


# -- 4. hostile sizes ---------------------------------------------------------------------------


def test_a_billion_laughs_definition_fails_fast_with_a_clear_message(portal: Portal) -> None:
    began = time.monotonic()
    job, out = portal.run(data={"line": "deploy lol.yml"},
                          files={"lol.yml": ("lol.yml", BILLION_LAUGHS.encode())})
    assert job["state"] == "failed", out
    assert "lol.yml" in out and "billion laughs" in out and "nothing deployed" in out, out
    assert job["ms"] < 1000, job  # the tool's whole run, interpreter start included
    assert time.monotonic() - began < 10
    # The parse itself, measured here: milliseconds and a few MB, not 9^9 nodes.
    tracemalloc.start()
    began = time.perf_counter()
    with pytest.raises(safeyaml.YamlProblem, match="billion laughs"):
        safeyaml.loads(BILLION_LAUGHS)
    elapsed = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 32 * MiB


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def post_huge(port: int, total: int, chunked: bool) -> tuple[int, bytes]:
    """Send a POST /jobs of `total` bytes as fast as the gateway takes it, reading its answer
    as soon as there is one: (bytes sent by then, the answer)."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (f"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n")
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {total}\r\n\r\n"
    sock.sendall(head.encode())
    block = b"x" * (256 * 1024)
    if chunked:
        block = b"%x\r\n" % len(block) + block + b"\r\n"
    sock.settimeout(0.001)
    sent, answer = 0, b""
    try:
        while sent < total and not answer:
            try:
                sent += sock.send(block)
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                pass
        sock.settimeout(10)
        while b"}" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    except ConnectionResetError:
        pass  # the gateway closed on the rest of the body; what it answered is read
    finally:
        sock.close()
    return sent, answer


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mb_upload_is_413_without_the_gateway_reading_it(stack: infra.Stack,
                                                              chunked: bool) -> None:
    assert stack.gateway is not None
    pid = stack.gateway.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart the peak-RSS count from here
    before = peak_rss_kib(pid)
    began = time.monotonic()
    sent, answer = post_huge(stack.port, 100 * MiB, chunked)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert "OCHO_MAX_REQUEST_BYTES" in body["error"]
    # Refused at once for a declared size; cut off at the cap for a chunked body.
    assert sent < (4 * MiB if not chunked else MAX_REQUEST_BYTES + 8 * MiB), sent
    assert time.monotonic() - began < 5
    assert peak_rss_kib(pid) - before < 16 * 1024, (before, peak_rss_kib(pid))
    assert requests.get(f"{stack.url}/healthz", timeout=10).status_code == 200


def test_an_unauthenticated_body_is_never_read(stack: infra.Stack) -> None:
    """The 401 comes from the headers: a client that declares a body and sends none of it
    has its answer at once, so nothing of a body it did send would have been read."""
    start = b"Host: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
    heads = {
        "no token": b"POST /jobs HTTP/1.1\r\n" + start + b"Content-Length: 4000000\r\n",
        "a wrong token, chunked": b"POST /jobs HTTP/1.1\r\n" + start
        + b"Authorization: Bearer wrong\r\nTransfer-Encoding: chunked\r\n",
        "a signature without a timestamp": b"POST /shell HTTP/1.1\r\n" + start
        + b"X-Shell: ls\r\nX-Signature: sha256=00\r\nContent-Length: 4000000\r\n",
        "a stale signature": b"POST /shell HTTP/1.1\r\n" + start + b"X-Shell: ls\r\n"
        + b"X-Signature: sha256=00\r\nX-Signature-Timestamp: 1000\r\nContent-Length: 4000000\r\n",
    }
    for what, head in heads.items():
        with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
            sock.sendall(head + b"Expect: 100-continue\r\n\r\n")
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401 "), (what, answer[:200])
        assert b"www-authenticate: bearer" in answer.lower(), what


# -- 5. the tools' environment and limits ------------------------------------------------------


def test_a_tool_sees_no_secret(portal: Portal) -> None:
    job, out = portal.run(json={"tool": "env"})
    assert job["state"] == "succeeded", out
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    for name in ("OCHO_AMQP_URL", "OCHO_DATABASE_URL", "OCHO_TOKENS", "OCHO_TOKEN_FILE"):
        assert name not in seen
    for secret in SECRETS:
        assert secret not in out
    assert set(seen) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONUNBUFFERED",
                         "PYTHONIOENCODING", "PYTHONPATH", "OCHO_JOB_ID", "OCHO_ATTEMPT",
                         "LC_CTYPE"}, seen
    assert seen["HOME"] not in seen["PYTHONPATH"].split(":")  # uploads are never code
    help_text = portal.call("GET", "/tools/env").json()["help"]  # --help runs in the gateway
    assert not any(secret in help_text for secret in SECRETS)


@pytest.mark.parametrize("kind", ["memory", "fork"])
def test_a_runaway_tool_is_stopped_and_the_worker_goes_on(portal: Portal, kind: str) -> None:
    # The same as tests/test_worker.py::test_runaway_tool_is_stopped_by_its_limits, as an
    # HTTP client sees it.
    job, out = portal.run(json={"tool": "hog", "args": [kind], "timeout": 60})
    assert job["state"] == "failed", (job, out)
    assert ("MemoryError" if kind == "memory" else "BlockingIOError") in out
    assert job["ms"] < 30_000
    job, _ = portal.run(json={"tool": "exit", "args": ["0"]})
    assert job["state"] == "succeeded"


# -- AMQP requests: the same checks ------------------------------------------------------------


def publish_raw(amqp_url: str, body: bytes, job_id: str) -> tuple[dict[str, Any], bytes | None]:
    """Publish a request body as another service would; its finished event, and the message
    as it was dead-lettered (None if it was not)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        reply = channel.queue_declare("", exclusive=True).method.queue
        # The gateway's recorder reads ocho.dead; a queue of ours on the fanout sees it too.
        dead_letters = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(dead_letters, topology.DEAD_EXCHANGE)
        channel.basic_publish(topology.JOBS_EXCHANGE, "args", body, pika.BasicProperties(
            message_id=job_id, correlation_id=job_id, reply_to=reply, delivery_mode=2,
            content_type="application/json"), mandatory=True)
        deadline = time.monotonic() + 30
        while True:
            method, _, event_body = channel.basic_get(reply, auto_ack=True)
            if method is not None:
                event = json.loads(event_body)
                if event["type"] == "finished":
                    break
            assert time.monotonic() < deadline, "no finished event"
            time.sleep(0.02)
        dead = None
        while time.monotonic() < deadline and dead is None:
            method, properties, dead_body = channel.basic_get(dead_letters, auto_ack=True)
            if method is None:
                time.sleep(0.02)
            elif properties.message_id == job_id:
                dead = dead_body
        return event, dead
    finally:
        connection.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_amqp_requests_get_the_http_checks_and_are_dead_lettered(portal: Portal,
                                                                 amqp_url: str) -> None:
    target = escape_target()
    limit = Settings(max_request_bytes=MAX_REQUEST_BYTES).max_message_bytes
    cases = {
        "oversized body": ({"tool": "args", "args": ["x" * 4000] * 10,
                            "files": {"pad": "A" * (limit + 16)}}, "body"),
        "too many files": ({"tool": "args", "files": {f"f{i}": b64(b"x")
                                                      for i in range(MAX_FILES + 1)}}, "files"),
        "a file over its cap": ({"tool": "args",
                                 "files": {"big": b64(b"x" * (MAX_FILE_BYTES + 1))}}, "files"),
        "files over the request cap": ({"tool": "args", "files": {
            f"f{i}": b64(b"x" * MAX_FILE_BYTES) for i in range(5)}}, "files"),
        "an escaping name": ({"tool": "args", "files": {str(target): b64(b"pwned")}}, "files"),
        "a climbing name": ({"tool": "args",
                             "files": {f"../../../..{target}": b64(b"pwned")}}, "files"),
        "the tool's script": ({"tool": "args", "files": {"args.py": b64(b"print(1)")}},
                              "args.py"),
        "a path for a tool": ({"tool": "../tools/args"}, "tool"),
        "a NUL in an argument": ({"tool": "args", "args": ["a\x00b"]}, "args"),
        "not JSON": (b"{'tool': 'args'}", "JSON"),
    }
    for what, (request, mentioned) in cases.items():
        job_id = str(uuid.uuid4())
        body = request if isinstance(request, bytes) else json.dumps({"id": job_id, **request}
                                                                     ).encode()
        event, dead = publish_raw(amqp_url, body, job_id)
        assert event["state"] == "rejected", (what, event)
        assert mentioned in event["reason"], (what, event["reason"])
        assert dead is not None and len(dead) == len(body), what
        recorded = portal.wait(job_id, timeout=10)
        assert recorded["state"] == "rejected" and recorded["reason"] == event["reason"], what
    assert not target.exists()
    job, _ = portal.run(json={"tool": "exit", "args": ["0"]})  # the worker goes on
    assert job["state"] == "succeeded"


# -- 6. fuzzing: no input is a 5xx ----------------------------------------------------------------

SAFE_TOOLS = ["args", "exit", "cat", "env"]  # fast, harmless: the others may hog or crash
UNSAFE_TOOLS = {"crash", "hog", "sleep", "spew", "deploy", "kill", "scale", "log", "grep", "info",
                "ls"}
FUZZ = hypothesis_settings(max_examples=120, deadline=None, database=None,
                           suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)
tool_names = (st.sampled_from(SAFE_TOOLS)
              | st.sampled_from(["nope", "", "../args", "ARGS", "args\n", "_x", "args.py"])
              | st.text(max_size=10).filter(lambda name: name not in UNSAFE_TOOLS))
plain_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,15}", fullmatch=True)
names = plain_names | st.sampled_from(BAD_NAMES) | st.text(max_size=16)
arg_lists = st.lists(st.text(max_size=16), max_size=4)
lines = st.builds(lambda tool, args: shlex.join([tool, *args]), st.sampled_from(SAFE_TOOLS),
                  arg_lists) | st.text(max_size=24)


@st.composite
def job_bodies(draw: st.DrawFn) -> bytes:
    """Mostly near-valid requests, each field sometimes anything at all."""
    shape = draw(st.integers(0, 19))
    if shape == 0:
        return draw(st.binary(max_size=64))
    if shape == 1:
        return json.dumps(draw(json_values)).encode()
    odd = st.integers(0, 7).map(lambda n: n == 0)  # now and then, anything at all
    body: dict[str, Any] = {"tool": draw(tool_names if draw(odd) else st.sampled_from(SAFE_TOOLS))}
    optional = {
        "args": (arg_lists, json_values),
        "files": (st.dictionaries(plain_names, st.binary(max_size=16).map(b64), max_size=3),
                  st.dictionaries(names, st.binary(max_size=16).map(b64) | json_values,
                                  max_size=3)),
        "timeout": (st.integers(1, 30), st.integers(-5, 10**30) | json_values),
        "id": (st.uuids().map(str), st.text(max_size=8) | json_values),
        "correlation_id": (st.text(max_size=40), st.text(min_size=200, max_size=300)
                           | json_values),
    }
    for key, (usual, unusual) in optional.items():
        if draw(st.booleans()):
            body[key] = draw(unusual if draw(odd) else usual)
    if draw(st.integers(0, 19)) == 0:
        body[draw(st.text(min_size=1, max_size=6))] = draw(json_values)
    return json.dumps(body).encode()


@given(body=job_bodies())
@FUZZ
def test_fuzz_json_jobs(portal: Portal, body: bytes) -> None:
    response = portal.submit(data=body, headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (body, response.text)
    assert response.headers["Content-Type"] == "application/json"


def first_words(line: str) -> list[str]:
    try:
        return shlex.split(line)[:2]
    except ValueError:
        return []


def harmless(line: str) -> bool:
    """Not a line that runs a tool which hogs, sleeps or kills its parent: `help TOOL` runs
    the tool's --help in the gateway, and tests/tools/crash.py kills whoever started it."""
    words = first_words(line)
    return not words or (words[0] not in UNSAFE_TOOLS and not (words[0] == "help"
                                                               and len(words) > 1))


extra_fields = st.dictionaries(st.sampled_from(["timeout", "id", "correlation_id"])
                               | st.text(max_size=6), st.text(max_size=12), max_size=2)
forms = (st.builds(lambda line, extra: {"line": line, **extra}, lines, extra_fields)
         | st.builds(lambda tool, args, extra: {"tool": tool, "args": args, **extra}, tool_names,
                     arg_lists.map(json.dumps) | st.text(max_size=12), extra_fields)
         | st.dictionaries(st.text(max_size=6), st.text(max_size=12), max_size=3))
uploads = st.lists(st.tuples(plain_names | names, plain_names | names, st.binary(max_size=32)),
                   max_size=3)


@given(fields=forms, files=uploads)
@FUZZ
def test_fuzz_multipart_jobs(portal: Portal, fields: dict[str, str],
                             files: list[tuple[str, str, bytes]]) -> None:
    if fields.get("tool") in UNSAFE_TOOLS or not harmless(fields.get("line", "")):
        return
    response = portal.submit(data=fields, files=[(field or "f", (name, content))
                                                 for field, name, content in files] or None)
    assert response.status_code < 500, (fields, files, response.text)
    assert response.headers["Content-Type"] == "application/json"


header_lines = (st.builds(lambda tool, args: shlex.join([tool, *args]).encode(),
                          st.sampled_from([*SAFE_TOOLS, "help", "nope"]), arg_lists)
                | st.binary(max_size=32)).map(
    lambda line: line.replace(b"\r", b"").replace(b"\n", b"").lstrip())


@given(line=header_lines, files=st.lists(st.tuples(plain_names | names, st.binary(max_size=32)),
                                         max_size=3),
       timeout=st.none() | st.integers(1, 30).map(str) | st.text(max_size=5))
@FUZZ
def test_fuzz_shell(portal: Portal, line: bytes, files: list[tuple[str, bytes]],
                    timeout: str | None) -> None:
    if not harmless(line.decode("utf-8", errors="replace")) or not harmless(
            line.decode("latin-1")):
        return
    response = portal.call("POST", "/shell", headers={"X-Shell": line},
                           params={"timeout": timeout} if timeout is not None else None,
                           files=[(name or "f", ("f", content)) for name, content in files]
                           or None, timeout=60)
    assert response.status_code < 500, (line, files, response.text)
    assert response.headers["Content-Type"] == "application/json"


# -- secrets stay out of the logs (last: it reads what the whole module logged) ------------------


def test_no_secret_in_any_log(stack: infra.Stack, portal: Portal) -> None:
    # A few more things worth logging: a rejected credential, a failed job, a bad request.
    portal.call("GET", "/jobs", token="wrong")
    portal.run(json={"tool": "exit", "args": ["3", "failing on purpose"]})
    portal.submit(json={"tool": "nope"})
    gateway_log, worker_log = stack.read_log("gateway.log"), stack.read_log("worker0.log")
    assert "API token(s) configured" in gateway_log
    assert "submitted" in gateway_log and "consuming" in worker_log
    for name, text in (("gateway", gateway_log), ("worker", worker_log)):
        for secret in SECRETS:
            assert secret not in text, f"a secret appears in the {name}'s log"
