"""One contract, one set of answers (issue 17): the same bad request gets the same
reason whether it comes over HTTP (JSON or a multipart form) or straight over AMQP.

A real gateway and a real worker with small file caps; each bad request is sent as
POST /jobs and published to ocho.jobs, and the HTTP answer's `error` is compared
with the `reason` of the worker's `finished`/`rejected` event.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
import requests

from tests import infra
from tests.infra import Stack

# The whole HTTP body is capped by OCHO_MAX_REQUEST_BYTES too, so the files' total
# cap cannot be met over HTTP before it; it is `check`'s last step, shared as well.
MAX_FILES, MAX_FILE_BYTES, MAX_REQUEST_BYTES = 2, 16, 16 * 1024


def b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


# (what, request fields without id, the multipart uploads that say the same or None)
BAD_REQUESTS: list[tuple[str, dict[str, Any], dict[str, bytes] | None]] = [
    ("args not a list", {"tool": "exit", "args": "-l"}, None),
    ("a NUL in an argument", {"tool": "exit", "args": ["a\0b"]}, None),
    ("an argument too long", {"tool": "exit", "args": ["x" * 4097]}, None),
    ("not a tool name", {"tool": "Exit"}, None),
    ("timeout below 1", {"tool": "exit", "timeout": 0}, None),
    ("an unknown field", {"tool": "exit", "bogus": 1}, None),
    ("files not base64", {"tool": "exit", "files": {"x": "not base64!"}}, None),
    ("a file name with a slash", {"tool": "exit", "files": {"../x": b64(b"hi")}}, None),
    ("a hidden file", {"tool": "exit", "files": {".x": b64(b"hi")}}, {".x": b"hi"}),
    ("a file name over 255 bytes", {"tool": "exit", "files": {"é" * 128: b64(b"hi")}},
     {"é" * 128: b"hi"}),
    ("too many files", {"tool": "exit", "files": {n: b64(b"x") for n in "abc"}},
     {n: b"x" for n in "abc"}),
    ("a file too large", {"tool": "exit", "files": {"big": b64(b"x" * 17)}},
     {"big": b"x" * 17}),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("contract")
    stack = Stack(workdir, amqp_url, tools_dir=infra.clone_tools_dir(workdir / "tools"),
                  max_files=MAX_FILES, max_file_bytes=MAX_FILE_BYTES,
                  max_request_bytes=MAX_REQUEST_BYTES)
    stack.start_gateway()
    stack.start_worker(concurrency=1)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def amqp(amqp_url: str, stack: Stack) -> Iterator[tuple[Any, str]]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    replies = channel.queue_declare("", exclusive=True).method.queue
    yield channel, replies
    connection.close()


def over_amqp(amqp: tuple[Any, str], fields: dict[str, Any]) -> str:
    """The reason a worker rejects the request with, published as a client would."""
    channel, replies = amqp
    job_id = str(uuid.uuid4())
    body = json.dumps({"id": job_id, **fields}).encode()
    channel.basic_publish("ocho.jobs", str(fields["tool"]), body, pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id=job_id,
        correlation_id=job_id, reply_to=replies), mandatory=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        method, _props, event_body = channel.basic_get(replies, auto_ack=True)
        if method is None:
            channel.connection.process_data_events(time_limit=0.05)
            continue
        event = json.loads(event_body)
        if event["id"] == job_id and event["type"] == "finished":
            assert event["state"] == "rejected", event
            return str(event["reason"])
    raise AssertionError(f"no finished event for {job_id}")


def over_http(stack: Stack, fields: dict[str, Any]) -> str:
    response = requests.post(f"{stack.url}/jobs", json=fields, timeout=10)
    assert response.status_code in (400, 413), response.text
    return str(response.json()["error"])


def over_a_form(stack: Stack, tool: str, uploads: dict[str, bytes]) -> str:
    files = [("file", (name, content)) for name, content in uploads.items()]
    response = requests.post(f"{stack.url}/jobs", data={"tool": tool}, files=files,
                             timeout=10)
    assert response.status_code in (400, 413), response.text
    return str(response.json()["error"])


@pytest.mark.parametrize(("what", "fields", "uploads"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_a_bad_request_gets_the_same_reason_over_http_and_amqp(
        stack: Stack, amqp: tuple[Any, str], what: str, fields: dict[str, Any],
        uploads: dict[str, bytes] | None) -> None:
    reason = over_http(stack, fields)
    assert reason.split(":")[0].split(".")[0] in ("args", "tool", "timeout", "bogus", "files")
    assert over_amqp(amqp, fields) == reason, what
    if uploads is not None:
        assert over_a_form(stack, str(fields["tool"]), uploads) == reason, what


def test_a_started_event_on_the_cancel_log_is_a_start_with_its_args_not_a_bad_command() -> None:
    """The cancel log is bound to job.started: a worker reads every start there, even one
    whose arguments make it longer than any command, and the args keep their order."""
    from ocho import contract

    job_id, args = str(uuid.uuid4()), ("-n", "x" * 4096) * 20  # ~80 KiB: over 64 KiB
    started = contract.Started(job_id, 2, "w1", 1.5, "exit", "a" * 64, args)
    body = contract.encode_event(started)
    assert len(body) > 64 * 1024
    assert contract.decode_control(body, 64 * 1024, len(body)) == started
    assert json.loads(body)["args"] == list(args)
    with pytest.raises(contract.InvalidRequest, match="at most 65536"):
        contract.decode_control(contract.Cancel(job_id).encode() + b" " * 65536,
                                64 * 1024, 1024 * 1024)
    finished = contract.Finished(job_id, 1, "succeeded", args=("a", "b"))
    assert contract.event_fields(contract.decode_event(contract.encode_event(finished)))[
        "args"] == ["a", "b"]
