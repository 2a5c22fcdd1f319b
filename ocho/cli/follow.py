"""Printing a job's output as it arrives, and the exit status it ends with.

Invariant: output is followed over the event stream and resumed with
Last-Event-ID after a drop, so nothing is printed twice or skipped.
"""

from __future__ import annotations

import json
import sys
import time

from ocho.cli.client import STREAM_IDLE_TIMEOUT_S, Gateway, job_path
from ocho.cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SIGNAL_BASE,
    EXIT_TIMED_OUT,
    EXIT_UNAVAILABLE,
    CliError,
    unavailable,
)
from ocho.cli.escape import harmless

# typing costs start-up time; type checkers read this block, the interpreter skips it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

# While following: say so when a job is still waiting for a worker after this long.
QUEUED_HINT_S = 5.0
# Give up on a gateway that keeps refusing the event stream for this long.
RECONNECT_FOR_S = 60.0


class Terminal:
    """Where output and notes go: bytes, flushed at once, so streams interleave in order.

    Piped output is written exactly as it came. On a terminal it is made harmless
    (ocho.cli.escape), where `\\r\\n` is a newline: a `\\r` that ends one piece of
    output is held back until the next piece, a note or the end of the output
    (end_output), so a `\\r\\n` split over two events shows as one newline too.
    """

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self._terminals: dict[str, bool] = {}
        self._held: dict[str, str] = {}  # per stream: a trailing "\r" not yet shown

    def write(self, stream: str, text: str) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        if self._is_terminal(stream, target):
            text = self._held.pop(stream, "") + text
            if text.endswith("\r"):
                text, self._held[stream] = text[:-1], "\r"
            text = harmless(text)  # a tool's escape sequences must not drive the terminal
        if text:
            target.buffer.write(text.encode("utf-8", errors="replace"))
            target.buffer.flush()

    def end_output(self) -> None:
        """Show what was held back: no `\\n` came to make a newline of it."""
        held, self._held = self._held, {}
        for stream, text in held.items():
            target = sys.stdout if stream == "stdout" else sys.stderr
            target.buffer.write(harmless(text).encode())
            target.buffer.flush()

    def _is_terminal(self, stream: str, target: Any) -> bool:
        if stream not in self._terminals:
            try:
                self._terminals[stream] = target.isatty()
            except (ValueError, OSError):
                self._terminals[stream] = False
        return self._terminals[stream]

    def note(self, text: str) -> None:
        self.end_output()
        sys.stdout.flush()
        print(f"ocho: {text}", file=sys.stderr, flush=True)

    def detail(self, text: str) -> None:
        if self.verbose:
            self.note(text)


class ServerEvent:
    __slots__ = ("kind", "data", "id")

    def __init__(self, kind: str, data: str, event_id: str | None) -> None:
        self.kind, self.data, self.id = kind, data, event_id


def read_server_events(response: Any) -> Iterator[ServerEvent]:
    """Parse a text/event-stream response (comments and retry fields are skipped)."""
    kind: str = "message"
    event_id: str | None = None
    data: list[str] = []
    while True:
        raw = response.readline()
        if not raw:
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield ServerEvent(kind, "\n".join(data), event_id)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


class Follower:
    """Follows one job's output over GET /jobs/<id>/events until it finishes.

    The event id is the byte offset after each chunk, so a dropped stream resumes
    with Last-Event-ID where it stopped: nothing is printed twice or skipped.
    """

    def __init__(self, gateway: Gateway, job_id: str, terminal: Terminal) -> None:
        self.gateway = gateway
        self.job_id = job_id
        self.terminal = terminal
        self.last_event_id: str | None = None
        self.seen_output = False

    def follow(self) -> dict[str, Any]:
        """Print output until the job ends; the job as it ended."""
        hint = self._queued_hint()
        failing_since: float | None = None
        delay = 0.5
        try:
            while True:
                try:
                    job = self._stream_once()
                except CliError as exc:
                    if exc.exit_code != EXIT_UNAVAILABLE:
                        raise
                    if failing_since is None:
                        failing_since = time.monotonic()
                        self.terminal.note(f"{exc}; reconnecting…")
                    if time.monotonic() - failing_since > RECONNECT_FOR_S:
                        raise unavailable(f"{exc} — job {self.job_id} may still be running; "
                                          f"reattach with: ocho output {self.job_id} --follow"
                                          ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if job is not None:
                    return job
                # The stream ended early (the gateway restarting, a proxy's time limit):
                # resume it from the last event, gently.
                failing_since, delay = None, 0.5
                time.sleep(0.2)
        finally:
            if hint is not None:
                hint.cancel()
            self.terminal.end_output()

    def _stream_once(self) -> dict[str, Any] | None:
        import http.client

        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        response = self.gateway.open("GET", job_path(self.job_id, "events"), headers=headers,
                                     timeout=STREAM_IDLE_TIMEOUT_S)
        try:
            for event in read_server_events(response):
                finished = self._handle(event)
                if event.id is not None:
                    self.last_event_id = event.id
                if finished is not None:
                    return finished
        except (OSError, http.client.HTTPException) as exc:
            # A dropped or stalled stream: the caller reconnects from the last event.
            raise self.gateway.unreachable(exc) from None
        finally:
            response.close()
        return None

    def _handle(self, event: ServerEvent) -> dict[str, Any] | None:
        try:
            payload = json.loads(event.data)
        except ValueError:
            return None  # not one of ours; a newer gateway may send more kinds
        if event.kind == "output":
            self.seen_output = True
            self.terminal.write("stdout" if payload["stream"] == "stdout" else "stderr",
                                payload["data"])
        elif event.kind == "attempt" and payload["attempt"] > 1:
            # A redelivery: the gateway streams the new attempt's output from byte 0.
            self.terminal.note(f"job {self.job_id} started over as attempt "
                               f"{payload['attempt']} (its worker was lost); its output "
                               "starts again from the beginning")
        elif event.kind == "finished":
            return payload
        return None

    def _queued_hint(self) -> Any:
        import threading

        def check() -> None:
            if self.seen_output:
                return
            try:
                state = self.gateway.job(self.job_id)["state"]
            except CliError:
                return
            if state == "queued":
                self.terminal.note(f"job {self.job_id} is still queued: no worker has taken "
                                   "it yet (is ocho-worker running?)")

        timer = threading.Timer(QUEUED_HINT_S, check)
        timer.daemon = True
        timer.start()
        return timer


def exit_code_of(job: dict[str, Any], terminal: Terminal) -> int:
    """The exit status that tells a shell how the job ended; a note when it is not plain."""
    state, code, job_id = job["state"], job.get("exit_code"), job["id"]
    reason = job.get("reason")
    took = f" in {job['ms'] / 1000:.1f} s" if job.get("ms") is not None else ""
    if state == "succeeded":
        terminal.detail(f"job {job_id} succeeded{took}")
        return EXIT_OK
    if state == "timed_out":
        terminal.note(f"job {job_id} timed out: {reason or 'it ran past its time limit'}")
        return EXIT_TIMED_OUT
    if state == "cancelled":
        how = reason if reason and reason.startswith("cancelled") else "cancelled"
        terminal.note(f"job {job_id} {how}")
        return EXIT_INTERRUPTED
    if state == "rejected":
        terminal.note(f"job {job_id} was rejected: {reason or 'no reason given'}")
        return EXIT_REFUSED
    if code is None:
        terminal.note(f"job {job_id} failed: {reason or 'the tool could not be run'}")
        return EXIT_UNAVAILABLE
    if code < 0:
        terminal.note(f"job {job_id} failed: {reason or f'killed by signal {-code}'}")
        return EXIT_SIGNAL_BASE - code
    terminal.detail(f"job {job_id} failed with exit code {code}{took}")
    return code if code < 256 else 1


def follow_job(gateway: Gateway, job_id: str, terminal: Terminal) -> int:
    """Print the job's output to its end; Ctrl-C asks whether to cancel it."""
    follower = Follower(gateway, job_id, terminal)
    while True:
        try:
            return exit_code_of(follower.follow(), terminal)
        except KeyboardInterrupt:
            if not ask_to_cancel(job_id):
                terminal.note(f"detached; job {job_id} keeps running — reattach: "
                              f"ocho output {job_id} --follow; stop it: ocho cancel {job_id}")
                return EXIT_INTERRUPTED
            try:
                gateway.cancel(job_id)
            except CliError as exc:
                if exc.exit_code != EXIT_REFUSED:  # refused: it ended meanwhile
                    raise CliError(f"job {job_id} was not cancelled: {exc}; it keeps "
                                   f"running — try again: ocho cancel {job_id}",
                                   exc.exit_code) from None
            terminal.note(f"cancelling job {job_id}…")
            # Keep following: the tool's last words and the final state still come.


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # closed
        return False


def ask_to_cancel(job_id: str) -> bool:
    sys.stdout.flush()
    sys.stderr.write(f"\nocho: cancel job {job_id}? [y/N] ")
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline() if sys.stdin is not None else ""
    except (KeyboardInterrupt, EOFError, OSError, ValueError):
        answer = ""
    if not stdin_is_terminal() or not answer.endswith("\n"):
        # Nothing echoed the answer and its newline: keep the next note on a line of its own.
        sys.stderr.write(answer.strip() + "\n")
    return answer.strip().lower() in ("y", "yes")
