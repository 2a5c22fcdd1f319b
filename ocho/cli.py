"""`ocho`: run portal tools from a terminal, through the HTTP gateway.

Only the standard library, imported lazily where it costs: the CLI must start
fast, so nothing here imports pika, flask, marshmallow or kubernetes (not even
ocho.message, which pulls in marshmallow).
"""

from __future__ import annotations

import json
import os
import sys
import time

# typing, dataclasses and pathlib would cost more start-up time than all of the
# rest; type checkers read this block, the interpreter skips it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import IO, Any, NoReturn

    Command = Callable[["Options", list[str], "Terminal"], int]

DEFAULT_URL = "http://127.0.0.1:9000"
HISTORY_FILE = "~/.ocho_history"
HISTORY_LENGTH = 2000

EXIT_OK = 0
EXIT_TIMED_OUT = 124
EXIT_REFUSED = 125  # ocho usage error, bad request, unknown job or tool, job rejected
EXIT_UNAVAILABLE = 126  # the gateway cannot be reached or used, or failed to run the tool
EXIT_SIGNAL_BASE = 128  # + N: the tool was killed by signal N
EXIT_INTERRUPTED = 130  # the job was cancelled, or you detached from it with Ctrl-C

SUBCOMMANDS = ("run", "jobs", "status", "output", "cancel", "help")
TERMINAL_STATES = ("succeeded", "failed", "timed_out", "cancelled", "rejected")

# How long requests may take: plain calls, and the gap between two reads of an
# event stream (the gateway sends a keep-alive every 15 s).
REQUEST_TIMEOUT_S = 30.0
STREAM_IDLE_TIMEOUT_S = 45.0
# While following: say so when a job is still waiting for a worker after this long.
QUEUED_HINT_S = 5.0
# Give up on a gateway that keeps refusing the event stream for this long.
RECONNECT_FOR_S = 60.0
# How long `ocho cancel` waits to see the job end.
CANCEL_WAIT_S = 15

USAGE = """\
usage: ocho [OPTIONS] TOOL [ARGS...]      run a tool, print its output live
       ocho [OPTIONS] run TOOL [ARGS...]  the same, for a tool named like a command
       ocho jobs [--state S] [--tool T] [-n N] [--json]
       ocho status ID [--json] [--wait SECONDS]
       ocho output ID [--follow]
       ocho cancel ID [--no-wait]
       ocho help [TOOL]                   the tools there are, or one tool's options
       ocho                               an interactive shell (on a terminal)

Run a tool:  ocho deploy zookeeper.yml -p 3      ocho log 'zoo*'
  Everything after TOOL goes to the tool unchanged, except local files:
  - an argument naming an existing local file (defs/zookeeper.yml, or the value
    in --opt=FILE) is uploaded with the job under its base name, and the
    argument becomes that base name: the tool runs in a directory holding the
    uploads, so `ocho deploy defs/zookeeper.yml` just works;
  - a quoted pattern ('*.yml', 'defs/*.yml') uploads every local file it matches
    and reaches the tool as a pattern for those files ('*.yml'), for the tool to
    expand (deploy does). A pattern that matches no local file ('zoo*') is sent
    as it is;
  - directories are never uploaded, nor files named with a leading '.' (ocho
    refuses those rather than send a name the tool cannot open); --no-upload
    sends every argument as plain text.
  The tool's stdout goes to stdout and its stderr to stderr as it runs; ocho's
  own notes go to stderr. Ctrl-C asks whether to cancel the job (y) or leave it
  running and detach (n).

Commands take precedence over tools: a tool named like a command (run, jobs,
status, output, cancel, help) runs as `ocho run NAME ...`.

options (before TOOL or the command):
  --url URL          the gateway (OCHO_URL, default http://127.0.0.1:9000)
  --token TOKEN      sent as 'Authorization: Bearer TOKEN' (OCHO_TOKEN)
  --timeout SECONDS  the job's time limit (the portal caps it)
  -d, --detach       submit, print the job id on stdout, do not wait
  --no-upload        upload no files; send every argument as text
  -v, --verbose      say when the job is submitted and how it ended
  -h, --help         this help;  ocho COMMAND --help for a command's

exit status:
  0       the job succeeded (or the command worked)
  1-123   the tool's own exit code, passed through
  124     the job timed out
  125     refused: an ocho usage error, a bad request (unknown tool, bad
          arguments or files), an unknown job, or the job was rejected
  126     the gateway cannot be reached or used (down, token refused, 5xx),
          or the portal could not start the tool
  128+N   the tool was killed by signal N (137: SIGKILL, e.g. its memory limit)
  130     the job was cancelled, or you detached from it with Ctrl-C
  A tool that itself exits with 124-130 is passed through too; stderr says which.

In the shell, type what follows `ocho` (`deploy x.yml`, `jobs`, `help`); `exit`
or Ctrl-D leaves it. History is kept in ~/.ocho_history.
"""

SHELL_HELP = """\
Type a command line as you would after `ocho`:
  TOOL ARGS...        run a tool (local files in ARGS are uploaded)
  run TOOL ARGS...    run a tool named like a command
  jobs | status ID | output ID [--follow] | cancel ID
  help [TOOL]         the tools, or one tool's options
  exit                leave (or Ctrl-D)
"""


class CliError(Exception):
    """Something to say in one line on stderr, and the exit status to end with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def refused(message: str) -> CliError:
    return CliError(message, EXIT_REFUSED)


def unavailable(message: str) -> CliError:
    return CliError(message, EXIT_UNAVAILABLE)


# -- talking to the gateway -----------------------------------------------------------------


class Gateway:
    """The gateway's HTTP API over http.client: one connection per call."""

    def __init__(self, url: str, token: str | None) -> None:
        from urllib.parse import urlsplit

        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise refused(f"the gateway URL must look like http://HOST:PORT, not {url!r} "
                          "(--url or OCHO_URL)")
        try:
            self._port = parts.port
        except ValueError:
            raise refused(f"the gateway URL {url!r} has a bad port (--url or OCHO_URL)") from None
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._base_path = parts.path.rstrip("/")
        self._token = token

    # -- plain JSON calls
    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query)

    def post(self, path: str, body: bytes = b"", content_type: str | None = None) -> Any:
        return self.call("POST", path, body=body, content_type=content_type)

    def call(self, method: str, path: str, *, query: dict[str, Any] | None = None,
             body: bytes | None = None, content_type: str | None = None,
             timeout: float = REQUEST_TIMEOUT_S) -> Any:
        import http.client

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        response = self.open(method, path, query=query, body=body, headers=headers,
                             timeout=timeout)
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self.unreachable(exc) from None
        finally:
            response.close()
        try:
            return json.loads(raw)
        except ValueError:
            raise unavailable(f"the gateway at {self.url} answered {method} {path} with "
                              "something that is not JSON") from None

    # -- the connection itself, for calls and for event streams
    def open(self, method: str, path: str, *, query: dict[str, Any] | None = None,
             body: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float = REQUEST_TIMEOUT_S) -> Any:
        """Send a request; the response, once its status says it worked. `path` is
        already quoted (see job_path)."""
        import http.client
        from urllib.parse import urlencode

        target = self._base_path + path
        given = {k: v for k, v in (query or {}).items() if v is not None}
        if given:
            target += "?" + urlencode(given)
        headers = dict(headers or {})
        headers["User-Agent"] = "ocho-cli"
        headers["X-Ocho-Client"] = "cli"  # see the README's Security: not a cross-site form
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        kind = http.client.HTTPSConnection if self._scheme == "https" else \
            http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=timeout)
        try:
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self.unreachable(exc) from None
        if response.status >= 400:
            try:
                raise self._refusal(response)
            finally:
                connection.close()
        return response

    def _refusal(self, response: Any) -> CliError:
        try:
            message = first_line(str(json.loads(response.read())["error"]))
        except (OSError, ValueError, KeyError, TypeError):
            message = f"HTTP {response.status} {response.reason}"
        status = response.status
        if status == 401:
            return unavailable(f"the gateway at {self.url} wants a token: set OCHO_TOKEN or "
                               f"pass --token ({message})")
        if status == 403:
            return unavailable(f"the gateway at {self.url} refused the token: {message}")
        if status >= 500:
            retry = " — try again shortly" if status == 503 else ""
            return unavailable(f"the gateway at {self.url} failed ({status}): {message}{retry}")
        # The gateway speaks HTTP to everyone; an ocho user has a command for that.
        return refused(message.replace("GET /jobs lists the known jobs",
                                       "`ocho jobs` lists the recent ones"))

    def unreachable(self, exc: BaseException) -> CliError:
        import socket

        if isinstance(exc, ConnectionRefusedError):
            why = "connection refused — is it running? (make run)"
        elif isinstance(exc, socket.gaierror):
            why = f"unknown host {self._host!r} — check --url or OCHO_URL"
        elif isinstance(exc, TimeoutError):
            why = "it did not answer in time"
        elif isinstance(exc, (ConnectionResetError, ConnectionAbortedError)) or \
                type(exc).__name__ == "RemoteDisconnected":
            why = "it closed the connection"
        else:
            why = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        return unavailable(f"cannot reach the gateway at {self.url}: {why}")

    # -- the API
    def submit(self, tool: str, args: list[str], files: dict[str, bytes],
               timeout: int | None) -> dict[str, Any]:
        fields = {"tool": tool, "args": json.dumps(args)}
        if timeout is not None:
            fields["timeout"] = str(timeout)
        body, content_type = encode_multipart(fields, files)
        return self.post("/jobs", body, content_type)

    def job(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        timeout = REQUEST_TIMEOUT_S + (wait or 0)
        return self.call("GET", job_path(job_id), query={"wait": wait}, timeout=timeout)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.post(job_path(job_id, "cancel"))


def job_path(job_id: str, *rest: str) -> str:
    """/jobs/<id>/...: an id is one path segment, whatever the user typed."""
    from urllib.parse import quote

    return "/".join(["/jobs", quote(job_id, safe=""), *rest])


def first_line(text: str) -> str:
    """Errors are one line on stderr, even when the gateway quotes a traceback."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "no details given"
    return lines[0] + (" …" if len(lines) > 1 else "")


def encode_multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    """multipart/form-data, as a browser sends it."""
    boundary = "ocho-" + os.urandom(12).hex()
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     .encode() + value.encode() + b"\r\n")
    for name, content in files.items():
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{quoted}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# -- local files named in the arguments -----------------------------------------------------


def is_uploadable_name(name: str) -> bool:
    """The portal's own rule for file names, the 255-byte limit included; imported here,
    when a file is to be uploaded, to keep the CLI's start fast."""
    from ocho.contract import is_safe_file_name

    return is_safe_file_name(name)


def has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


class Uploads:
    """The files a command line names, by the base name the job will see them under."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def add(self, path: str) -> str:
        name = os.path.basename(path)
        if not is_uploadable_name(name):
            raise refused(f"cannot upload {path!r}: the portal takes only plain file names "
                          "that do not start with '.'; rename it, or use --no-upload to send "
                          "the argument as text")
        known = self.paths.get(name)
        if known is not None and os.path.realpath(known) != os.path.realpath(path):
            raise refused(f"two files would be uploaded as {name!r} ({known} and {path}); "
                          "the job sees one directory, so rename one")
        self.paths[name] = path
        return name

    def read(self) -> dict[str, bytes]:
        contents = {}
        for name, path in self.paths.items():
            try:
                with open(path, "rb") as handle:
                    contents[name] = handle.read()
            except OSError as exc:
                raise refused(f"cannot read {path}: {exc.strerror}") from None
        return contents


def prepare_arguments(args: list[str], upload: bool) -> tuple[list[str], Uploads]:
    """Rewrite the arguments that name local files and collect those files."""
    uploads = Uploads()
    if not upload:
        return list(args), uploads
    return [_rewrite(arg, uploads) for arg in args], uploads


def _rewrite(arg: str, uploads: Uploads) -> str:
    if arg.startswith("-") and "=" in arg:
        # --opt=FILE: the value may name a file; the option stays as it is.
        option, _, value = arg.partition("=")
        rewritten = _rewrite_value(value, uploads) if value else value
        return f"{option}={rewritten}"
    return _rewrite_value(arg, uploads)


def _rewrite_value(value: str, uploads: Uploads) -> str:
    if os.path.isfile(value):
        return uploads.add(value)
    if has_glob(value):
        import glob

        matches = [path for path in sorted(glob.glob(value)) if os.path.isfile(path)]
        if matches:
            for path in matches:
                uploads.add(path)
            # The tool runs where the uploads are: the pattern's file part finds them there.
            return os.path.basename(value)
    return value


# -- printing a job's output as it arrives --------------------------------------------------


class Terminal:
    """Where output and notes go: bytes, flushed at once, so streams interleave in order."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose

    def write(self, stream: str, text: str) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        target.buffer.write(text.encode("utf-8", errors="replace"))
        target.buffer.flush()

    def note(self, text: str) -> None:
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
    kind, data, event_id = "message", [], None
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


# -- running a tool -------------------------------------------------------------------------


class Options:
    """How to reach the gateway, and how to run a tool."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None) -> None:
        self.url = url
        self.token = token
        self.timeout: int | None = None
        self.detach = False
        self.upload = True
        self.verbose = False
        self.help = False

    @classmethod
    def from_env(cls) -> Options:
        return cls(url=os.environ.get("OCHO_URL") or DEFAULT_URL,
                   token=os.environ.get("OCHO_TOKEN") or None)

    def copy(self) -> Options:
        twin = Options()
        twin.__dict__.update(self.__dict__)
        return twin

    def gateway(self) -> Gateway:
        return Gateway(self.url, self.token)


VALUED_OPTIONS = ("--url", "--token", "--timeout")
FLAG_OPTIONS = {"-d": "detach", "--detach": "detach", "--no-upload": "upload",
                "-v": "verbose", "--verbose": "verbose", "-h": "help", "--help": "help"}


def parse_leading_options(words: list[str], options: Options) -> list[str]:
    """Consume ocho's options before the tool or command; the rest is returned as is."""
    words = list(words)
    while words and words[0].startswith("-"):
        word = words.pop(0)
        if word == "--":
            break
        name, has_value, value = word.partition("=")
        if name in VALUED_OPTIONS:
            if not has_value:
                if not words:
                    raise refused(f"{name} needs a value")
                value = words.pop(0)
            _set_valued(options, name, value)
        elif word in FLAG_OPTIONS:
            attribute = FLAG_OPTIONS[word]
            setattr(options, attribute, attribute != "upload")
        else:
            raise refused(f"unknown option {word!r} (options for the tool go after its name; "
                          "see ocho --help)")
    return words


def _set_valued(options: Options, name: str, value: str) -> None:
    if name == "--url":
        options.url = value
    elif name == "--token":
        options.token = value or None
    else:
        try:
            options.timeout = int(value)
        except ValueError:
            raise refused(f"--timeout must be a whole number of seconds, not {value!r}") from None
        if options.timeout < 1:
            raise refused("--timeout must be at least 1 second")


def run_tool(options: Options, tool: str, args: list[str], terminal: Terminal) -> int:
    gateway = options.gateway()
    sent_args, uploads = prepare_arguments(args, options.upload)
    job = gateway.submit(tool, sent_args, uploads.read(), options.timeout)
    job_id = job["id"]
    if options.detach:
        print(job_id, flush=True)
        terminal.detail(f"follow it with: ocho output {job_id} --follow")
        return EXIT_OK
    files = f" with {len(uploads.paths)} file(s)" if uploads.paths else ""
    terminal.detail(f"job {job_id} submitted{files}")
    return follow_job(gateway, job_id, terminal)


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


# -- the other commands ---------------------------------------------------------------------


def command_parser(name: str) -> Any:
    """argparse (imported only for commands) that reports usage errors as CliError."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise refused(f"{self.prog}: {message} (see {self.prog} --help)")

    parser = Parser(prog=f"ocho {name}")
    parser.add_argument("--url", help="the gateway (OCHO_URL)")
    parser.add_argument("--token", help="bearer token (OCHO_TOKEN)")
    return parser


def _with_connection_options(options: Options, parsed: Any) -> Options:
    chosen = options.copy()
    chosen.url = parsed.url or options.url
    chosen.token = parsed.token or options.token
    return chosen


def cmd_jobs(options: Options, words: list[str], terminal: Terminal) -> int:
    parser = command_parser("jobs")
    parser.description = "Recent jobs, newest first."
    parser.add_argument("--state", action="append", default=[],
                        help="only jobs in this state (repeat, or comma-separate): "
                             "queued, running, " + ", ".join(TERMINAL_STATES))
    parser.add_argument("--tool", help="only runs of this tool")
    parser.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON")
    parsed = parser.parse_args(words)
    gateway = _with_connection_options(options, parsed).gateway()
    states = ",".join(s for value in parsed.state for s in value.split(",") if s) or None
    page = gateway.get("/jobs", state=states, tool=parsed.tool, limit=parsed.limit)
    if parsed.json:
        print(json.dumps(page, indent=2))
        return EXIT_OK
    print_jobs_table(page["jobs"])
    return EXIT_OK


def print_jobs_table(jobs: list[dict[str, Any]]) -> None:
    import shlex
    import shutil

    if not jobs:
        print("no jobs yet", file=sys.stderr)
        return
    rows = [("ID", "STATE", "EXIT", "CREATED", "TOOK", "COMMAND")]
    for job in jobs:
        exit_code = job.get("exit_code")
        rows.append((job["id"], job["state"], "" if exit_code is None else str(exit_code),
                     local_time(job.get("created_at")), duration(job.get("ms")),
                     shlex.join([job.get("tool") or "?", *(job.get("args") or [])])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    room = shutil.get_terminal_size((120, 24)).columns - sum(widths) - 2 * len(widths)
    for row in rows:
        command = row[-1] if len(row[-1]) <= max(room, 20) else row[-1][:max(room, 20) - 1] + "…"
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + command)


def local_time(iso: str | None) -> str:
    if not iso:
        return "-"
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def cmd_status(options: Options, words: list[str], terminal: Terminal) -> int:
    parser = command_parser("status")
    parser.description = "One job: its state, exit code, timings."
    parser.add_argument("id", help="the job id")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON")
    parser.add_argument("--wait", type=float, metavar="SECONDS",
                        help="first wait up to SECONDS (at most 60) for the job to end")
    parsed = parser.parse_args(words)
    gateway = _with_connection_options(options, parsed).gateway()
    job = gateway.job(parsed.id, wait=parsed.wait)
    if parsed.json:
        print(json.dumps(job, indent=2))
    else:
        print_job_summary(job)
    return EXIT_OK


def print_job_summary(job: dict[str, Any]) -> None:
    import shlex

    state = job["state"]
    if job.get("exit_code") is not None:
        state += f", exit code {job['exit_code']}"
    lines = [
        ("id", job["id"]),
        ("command", shlex.join([job.get("tool") or "?", *(job.get("args") or [])])),
        ("state", state),
        ("reason", job.get("reason")),
        ("attempt", f"{job['attempt']} on {job['worker']}" if job.get("worker") else None),
        ("created", local_time(job.get("created_at"))),
        ("started", local_time(job.get("started_at")) if job.get("started_at") else None),
        ("finished", local_time(job.get("finished_at")) if job.get("finished_at") else None),
        ("took", duration(job.get("ms")) if job.get("ms") is not None else None),
        ("output", f"{job.get('output_bytes', 0)} bytes"
                   + (" (truncated: the portal kept only the first part)"
                      if job.get("truncated") else "")),
    ]
    for label, value in lines:
        if value:
            print(f"{label:<9} {value}")


def cmd_output(options: Options, words: list[str], terminal: Terminal) -> int:
    parser = command_parser("output")
    parser.description = ("A job's output. Without --follow: what there is so far, stdout "
                          "and stderr together on stdout. With --follow: live, each on its "
                          "own stream, to the end; the exit status is the job's, as for a run.")
    parser.add_argument("id", help="the job id")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing until the job ends")
    parsed = parser.parse_args(words)
    gateway = _with_connection_options(options, parsed).gateway()
    if parsed.follow:
        return follow_job(gateway, parsed.id, terminal)
    offset = 0
    while True:
        out = gateway.get(job_path(parsed.id, "output"), offset=offset)
        terminal.write("stdout", out["data"])
        if out["next_offset"] <= offset or not out["data"]:
            break
        offset = out["next_offset"]
    if not out["finished"]:
        terminal.note(f"job {parsed.id} is {out['state']}; for the rest: "
                      f"ocho output {parsed.id} --follow")
    return EXIT_OK


def cmd_cancel(options: Options, words: list[str], terminal: Terminal) -> int:
    parser = command_parser("cancel")
    parser.description = "Stop a running job (its whole process group) or drop a queued one."
    parser.add_argument("id", help="the job id")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait to see the job end")
    parsed = parser.parse_args(words)
    gateway = _with_connection_options(options, parsed).gateway()
    job = gateway.cancel(parsed.id)
    if job["state"] not in TERMINAL_STATES and not parsed.no_wait:
        job = gateway.job(parsed.id, wait=CANCEL_WAIT_S)
    if job["state"] == "cancelled":
        print(f"job {parsed.id} cancelled")
    elif job["state"] in TERMINAL_STATES:
        print(f"job {parsed.id} ended {job['state']} before the cancel reached it")
    else:
        print(f"cancel sent; job {parsed.id} is still {job['state']} "
              f"(check: ocho status {parsed.id})")
    return EXIT_OK


def cmd_help(options: Options, words: list[str], terminal: Terminal) -> int:
    if words and words[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return EXIT_OK
    if len(words) > 1:
        raise refused("usage: ocho help [TOOL]")
    gateway = options.gateway()
    if words:
        name = words[0]
        if name in SUBCOMMANDS and name != "help":
            return dispatch(options, [name, "--help"], terminal)
        from urllib.parse import quote

        sys.stdout.write(gateway.get("/tools/" + quote(name, safe=""))["help"])
        return EXIT_OK
    tools = gateway.get("/tools")["tools"]
    print_tools(tools, gateway.url)
    return EXIT_OK


def print_tools(tools: list[dict[str, Any]], url: str) -> None:
    if not tools:
        print(f"the gateway at {url} has no tools")
        return
    width = max(len(tool["name"]) for tool in tools)
    print(f"tools at {url}:")
    for tool in tools:
        clash = (f"  (named like a command: run it as `ocho run {tool['name']}`)"
                 if tool["name"] in SUBCOMMANDS else "")
        print(f"  {tool['name']:<{width}}  {tool.get('summary') or ''}{clash}")
    print("\nocho TOOL ARGS... runs one; ocho help TOOL shows its options; "
          "ocho --help shows ocho's.")


# -- dispatch and the shell -----------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "jobs": cmd_jobs,
    "status": cmd_status,
    "output": cmd_output,
    "cancel": cmd_cancel,
    "help": cmd_help,
}


def dispatch(options: Options, words: list[str], terminal: Terminal) -> int:
    """One command line after `ocho`, options already taken off."""
    if not words:
        raise refused("nothing to run (see ocho --help)")
    first, rest = words[0], words[1:]
    if first in COMMANDS:
        return COMMANDS[first](options, rest, terminal)
    if first == "run":
        rest = parse_leading_options(rest, options)
        if options.help or not rest:
            if options.help:
                sys.stdout.write(USAGE)
                return EXIT_OK
            raise refused("usage: ocho run TOOL [ARGS...]")
        first, rest = rest[0], rest[1:]
    return run_tool(options, first, rest, terminal)


def shell(options: Options, terminal: Terminal) -> int:
    """An interactive prompt: each line is what would follow `ocho`."""
    import readline
    import shlex

    history = os.path.expanduser(HISTORY_FILE)
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(HISTORY_LENGTH)
    readline.set_completer(_completer(options))
    readline.set_completer_delims(" \t\n")
    readline.parse_and_bind("tab: complete")
    print(f"ocho shell on {options.url} — `help` lists the tools, `exit` leaves.",
          file=sys.stderr)
    status = EXIT_OK
    try:
        while True:
            try:
                line = input("ocho> ")
            except KeyboardInterrupt:
                print(file=sys.stderr)
                continue
            except EOFError:
                print(file=sys.stderr)
                break
            try:
                words = shlex.split(line)
            except ValueError as exc:
                terminal.note(f"cannot split that line: {exc}")
                continue
            if words and words[0] == "ocho":
                words = words[1:]
            if not words:
                continue
            if words[0] in ("exit", "quit"):
                break
            status = run_shell_line(options, words, terminal)
    finally:
        try:
            readline.write_history_file(history)
        except OSError:
            pass
    return status


def run_shell_line(options: Options, words: list[str], terminal: Terminal) -> int:
    if words == ["help"]:
        sys.stdout.write(SHELL_HELP + "\n")
    line_options = options.copy()
    try:
        words = parse_leading_options(words, line_options)
        status = dispatch(line_options, words, terminal)
    except CliError as exc:
        terminal.note(str(exc))
        status = exc.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        status = EXIT_INTERRUPTED
    if status:
        print(f"[exit {status}]", file=sys.stderr)
    return status


def _completer(options: Options) -> Callable[[str, int], str | None]:
    """Tab completes commands and tool names first, local files after."""
    import glob
    import readline

    tool_names: list[str] = []

    def candidates(text: str) -> list[str]:
        if readline.get_line_buffer()[:readline.get_begidx()].strip():
            return [p + ("/" if os.path.isdir(p) else "") for p in sorted(glob.glob(text + "*"))]
        if not tool_names:
            try:
                tool_names.extend(t["name"] for t in options.gateway().get("/tools")["tools"])
            except CliError:
                pass
        return sorted(w for w in {*SUBCOMMANDS, "exit", *tool_names} if w.startswith(text))

    def complete(text: str, index: int) -> str | None:
        found = candidates(text)
        return found[index] if index < len(found) else None

    return complete


def main(argv: list[str] | None = None) -> int:
    terminal = Terminal()
    try:
        options = Options.from_env()
        words = parse_leading_options(sys.argv[1:] if argv is None else argv, options)
        terminal.verbose = options.verbose
        if options.help:
            sys.stdout.write(USAGE)
            return EXIT_OK
        if not words:
            if stdin_is_terminal():
                return shell(options, terminal)
            sys.stderr.write(USAGE)
            return EXIT_REFUSED
        return dispatch(options, words, terminal)
    except CliError as exc:
        terminal.note(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`ocho cat big.log | head`): stop quietly.
        _silence(sys.stdout)
        return EXIT_SIGNAL_BASE + 13
    except Exception as exc:
        if os.environ.get("OCHO_DEBUG"):
            raise
        terminal.note(f"internal error: {type(exc).__name__}: {first_line(str(exc))} "
                      "(OCHO_DEBUG=1 shows the traceback)")
        return EXIT_UNAVAILABLE


def _silence(stream: IO[str]) -> None:
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
