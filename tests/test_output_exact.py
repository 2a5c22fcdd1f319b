"""A tool's output reaches the user exactly as the tool wrote it, on every path:
carriage returns (`\\r\\n`, a lone `\\r`, one at a chunk boundary, a trailing one)
are neither dropped nor turned into newlines.

The one rule applied to the bytes: each stream is decoded as UTF-8 on its own,
incrementally (a character split over two writes stays whole), and what is not
UTF-8 becomes U+FFFD. The expected text is computed here by that rule from the
bytes the `crlf` test tool writes (tests/tools/crlf.py), and compared with the
AMQP events (reply queue and ocho.events), GET /jobs/<id>/output (JSON and text,
from every chunk boundary), the event stream (live and replayed), POST /shell,
the `ocho` CLI's stdout and stderr bytes, and ocho.client; with warm and cold
tool starts, and with SQLite and PostgreSQL stores.

On a terminal (not a pipe) the CLI shows output by ocho.cli.escape's documented
rule instead (`\\r\\n` is a newline, a lone `\\r` is shown as `\\x0d`), applied
to the whole stream whatever the event boundaries.
"""

from __future__ import annotations

import codecs
import json
import os
import pty
import re
import select
import subprocess
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import requests

from ocho.cli.escape import harmless
from ocho.client import Client
from tests import infra
from tests.infra import Stack

OCHO = str(Path(infra.BIN) / "ocho")
PAUSE = "0.3"  # seconds between the tool's writes: past the worker's 0.2 s flush interval


def load_pieces() -> tuple[tuple[str, bytes], ...]:
    namespace: dict[str, Any] = {}
    source = (infra.ROOT / "tests" / "tools" / "crlf.py").read_text()
    exec(compile(source, "crlf.py", "exec"), namespace)  # not as __main__: it only defines
    return namespace["PIECES"]  # type: ignore[no-any-return]


PIECES = load_pieces()


def decoded(pieces: tuple[tuple[str, bytes], ...]) -> list[tuple[str, str]]:
    """(stream, text) per write, by the portal's rule: incremental UTF-8 per stream."""
    decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace")
                for name in ("stdout", "stderr")}
    return [(stream, decoders[stream].decode(data)) for stream, data in pieces]


EXPECTED = decoded(PIECES)
WHOLE = "".join(text for _, text in EXPECTED)
STDOUT = "".join(text for stream, text in EXPECTED if stream == "stdout")
STDERR = "".join(text for stream, text in EXPECTED if stream == "stderr")


def test_the_tool_writes_every_kind_of_carriage_return():
    """The expectations below are not vacuous."""
    raw = b"".join(data for _, data in PIECES)
    assert b"\r\n" in raw and re.search(rb"\r[^\n]", raw) and raw.endswith(b"\r")
    assert any(data.endswith(b"\r") and following.startswith(b"\n")
               for (_, data), (_, following) in zip(PIECES, PIECES[1:], strict=False))
    assert "\ufffd" in WHOLE and "café\r" in WHOLE
    assert STDERR.endswith("last err\r") and STDOUT.endswith("trailing CR\r")


@pytest.fixture(scope="module", params=[("warm", "sqlite"), ("cold", "postgresql")],
                ids=["warm-sqlite", "cold-postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          amqp_url: str) -> Iterator[Stack]:
    """Both ways tools start, and both stores (bytes in SQLite, bytea in PostgreSQL)."""
    tool_start, store = request.param
    workdir = tmp_path_factory.mktemp("exact")
    tools = infra.clone_tools_dir(workdir / "tools")
    database, database_url = infra.create_pg_database() if store == "postgresql" \
        else (None, None)
    stack = Stack(workdir, amqp_url, database_url, tools_dir=tools, tool_start=tool_start)
    try:
        stack.start_gateway()
        stack.start_worker(concurrency=4)
        yield stack
    finally:
        stack.stop()
        if database is not None:
            infra.drop_pg_database(database)


# -- reading server-sent events as the specification says --------------------------------------


def server_events(raw: bytes) -> list[tuple[str, str, str | None]]:
    """(event, data, id) per event. A line ends at \\r\\n, \\r or \\n (the SSE
    specification), so a raw \\r inside data would cut it: data must escape it."""
    events = []
    kind, data, event_id = "message", [], None
    for line in re.split(r"\r\n|\r|\n", raw.decode()):
        if not line:
            if data:
                events.append((kind, "\n".join(data), event_id))
            kind, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value
    return events


def read_event_stream(url: str, headers: dict[str, str] | None = None) -> bytes:
    """The raw stream, up to and including its `finished` event."""
    raw = b""
    with requests.get(url, headers=headers, stream=True, timeout=60) as response:
        assert response.status_code == 200
        for piece in response.iter_content(chunk_size=None):
            raw += piece
            if b"event: finished" in raw and raw.endswith(b"\n\n"):
                break
    return raw


def output_of_events(events: list[tuple[str, str, str | None]]) -> tuple[str, list[int]]:
    """The output the `output` events carry, and the offsets after each."""
    text, ends = "", []
    for kind, data, event_id in events:
        if kind == "output":
            chunk = json.loads(data)
            assert chunk["offset"] == len(text.encode())
            text += chunk["data"]
            assert event_id is not None and int(event_id) == len(text.encode())
            ends.append(int(event_id))
    assert events[-1][0] == "finished"
    return text, ends


def assert_streams(chunks: list[dict[str, Any]]) -> None:
    """Each chunk's stream is that of the bytes it holds; offsets are contiguous."""
    position = 0
    by_stream = {"stdout": "", "stderr": ""}
    for chunk in chunks:
        assert chunk["offset"] == position, chunks
        position += len(chunk["data"].encode())
        by_stream[chunk["stream"]] += chunk["data"]
    assert by_stream == {"stdout": STDOUT, "stderr": STDERR}


# -- over HTTP ------------------------------------------------------------------------------------


def test_the_event_stream_and_the_output_resource_carry_it_exactly(stack: Stack):
    job = stack.submit("crlf", [PAUSE])
    url = f"{stack.url}/jobs/{job['id']}"
    live = server_events(read_event_stream(f"{url}/events"))  # while the tool writes
    text, ends = output_of_events(live)
    assert text == WHOLE
    assert len(ends) > 3, "the output crossed event boundaries"
    assert b"\r" not in read_event_stream(f"{url}/events").replace(b"\\r", b"")
    chunks = [json.loads(data) for kind, data, _ in live if kind == "output"]
    assert_streams(chunks)

    whole = WHOLE.encode()
    for offset in [0, *ends]:
        answer = requests.get(f"{url}/output", params={"offset": offset}, timeout=10).json()
        assert answer["data"] == whole[offset:].decode(), offset
        assert answer["next_offset"] == len(whole) and answer["finished"] is True
        as_text = requests.get(f"{url}/output", params={"offset": offset, "format": "text"},
                               timeout=10)
        assert as_text.content == whole[offset:], offset
        replayed = server_events(read_event_stream(
            f"{url}/events", headers={"Last-Event-ID": str(offset)}))
        tail = [json.loads(data) for kind, data, _ in replayed if kind == "output"]
        assert "".join(chunk["data"] for chunk in tail) == whole[offset:].decode(), offset
        assert not tail or tail[0]["offset"] == offset


def test_post_shell_answers_it_exactly(stack: Stack):
    response = requests.post(f"{stack.url}/shell", headers={"X-Shell": f"crlf {PAUSE}"},
                             timeout=60)
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["out"] == WHOLE


# -- over AMQP ------------------------------------------------------------------------------------


class EventsTap:
    """Everything published on ocho.events, from a queue of our own (pika, in a thread)."""

    def __init__(self, amqp_url: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = self._connection.channel()
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, "ocho.events", "job.#")
        channel.basic_consume(queue, self._on_message, auto_ack=True)

    def _on_message(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        self.events.append(json.loads(body))

    def drain(self, job_id: str, timeout: float = 60) -> list[dict[str, Any]]:
        """The job's events up to its `finished`."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not any(e["id"] == job_id and e["type"] == "finished" for e in self.events):
                assert not deadline.is_set(), self.events
                self._connection.process_data_events(time_limit=0.2)
        finally:
            timer.cancel()
        return [event for event in self.events if event["id"] == job_id]

    def close(self) -> None:
        self._connection.close()


def chunks_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """As docs/amqp.md says to read output: `output` events, then the `finished` tail."""
    chunks = []
    for event in events:
        if event["type"] == "output":
            chunks.append({k: event[k] for k in ("stream", "offset", "data")})
        elif event["type"] == "finished":
            chunks.extend(event["output"])
    return chunks


def test_ocho_client_and_the_events_exchange_carry_it_exactly(stack: Stack):
    amqp_url = stack.env["OCHO_AMQP_URL"]
    tap = EventsTap(amqp_url)
    try:
        with Client(amqp_url) as client:
            job_id = client.submit("crlf", [PAUSE])
            result = client.wait(job_id, timeout=60)
            reply_chunks = [{k: e[k] for k in ("stream", "offset", "data")}
                            for e in result.events if e["type"] == "output"]
        broadcast = tap.drain(job_id)
    finally:
        tap.close()
    assert result.state == "succeeded"
    assert result.output == WHOLE
    assert_streams(reply_chunks)
    assert sum(e["type"] == "output" for e in broadcast) > 3, "crossed event boundaries"
    assert_streams(chunks_of(broadcast))


# -- the ocho CLI -------------------------------------------------------------------------------


def cli_env(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCHO_")}
    return {**env, "OCHO_URL": stack.url}


def test_the_cli_prints_each_stream_byte_for_byte(stack: Stack, tmp_path: Path):
    done = subprocess.run([OCHO, "crlf", PAUSE], cwd=tmp_path, env=cli_env(stack),
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout == STDOUT.encode()
    assert done.stderr == STDERR.encode()


def test_ocho_output_prints_it_byte_for_byte(stack: Stack, tmp_path: Path):
    job_id = stack.submit("crlf", [PAUSE])["id"]
    assert stack.wait(job_id)["state"] == "succeeded"
    done = subprocess.run([OCHO, "output", job_id], cwd=tmp_path, env=cli_env(stack),
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout, done.stderr) == (0, WHOLE.encode(), b"")
    followed = subprocess.run([OCHO, "output", job_id, "--follow"], cwd=tmp_path,
                              env=cli_env(stack), capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    assert followed.returncode == 0
    assert followed.stdout == STDOUT.encode() and followed.stderr == STDERR.encode()


def read_terminals(process: subprocess.Popen[bytes], controllers: dict[str, int],
                   timeout: float = 60) -> dict[str, bytes]:
    """All each pty showed until the process ended and closed it."""
    shown = {name: b"" for name in controllers}
    open_fds = {fd: name for name, fd in controllers.items()}
    deadline = time.monotonic() + timeout
    while open_fds:
        assert time.monotonic() < deadline, shown
        ready, _, _ = select.select(list(open_fds), [], [], 0.1)
        for fd in ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                data = b""
            if data:
                shown[open_fds[fd]] += data
            else:
                del open_fds[fd]
    assert process.wait(timeout=10) == 0
    return shown


def on_terminals(stack: Stack, cwd: Path, *args: str) -> dict[str, str]:
    """What `ocho ARGS` shows on a terminal for stdout and one for stderr."""
    controllers, terminals = {}, {}
    for name in ("stdout", "stderr"):
        controllers[name], terminals[name] = pty.openpty()
        tty.setraw(terminals[name])  # no \\n -> \\r\\n translation: the bytes as written
    try:
        process = subprocess.Popen([OCHO, *args], cwd=cwd, env=cli_env(stack),
                                   stdin=subprocess.DEVNULL, stdout=terminals["stdout"],
                                   stderr=terminals["stderr"])
        for fd in terminals.values():
            os.close(fd)
        shown = read_terminals(process, controllers)
    finally:
        for fd in controllers.values():
            os.close(fd)
    return {name: data.decode() for name, data in shown.items()}


def test_on_a_terminal_a_crlf_is_a_newline_even_split_over_two_events(stack: Stack,
                                                                      tmp_path: Path):
    """ocho.cli.escape's rule (\\r\\n is a newline, a lone \\r is shown escaped)
    applies to the stream, not to each event: a \\r\\n split over two is one newline,
    and a \\r held back to see what follows is still shown when nothing does."""
    shown = on_terminals(stack, tmp_path, "crlf", PAUSE)
    assert shown == {"stdout": harmless(STDOUT), "stderr": harmless(STDERR)}
    job_id = stack.submit("crlf", ["0"])["id"]
    assert stack.wait(job_id)["state"] == "succeeded"
    shown = on_terminals(stack, tmp_path, "output", job_id)
    # `ocho output` prints the stored output, both streams, to stdout. Written with no
    # pause, which stream's last piece the worker read last varies: either way the
    # \r it ends with is shown, and so is the other stream's, followed by the rest.
    assert shown["stderr"] == ""
    assert "trailing CR\\x0d" in shown["stdout"] and "last err\\x0d" in shown["stdout"]
    assert shown["stdout"].endswith(("trailing CR\\x0d", "last err\\x0d")), shown


def test_an_uploaded_file_is_printed_back_byte_for_byte(stack: Stack, tmp_path: Path):
    """The test tools themselves must not normalize (cat once read in text mode)."""
    raw = b"windows\r\nold mac\rtrailing\r"
    (tmp_path / "crlf.txt").write_bytes(raw)
    done = subprocess.run([OCHO, "cat", "crlf.txt"], cwd=tmp_path, env=cli_env(stack),
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout, done.stderr) == (0, raw, b"")
