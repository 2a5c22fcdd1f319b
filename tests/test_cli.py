"""The `ocho` console script as an operator uses it: the real script as a
subprocess, against a real gateway and worker on a real RabbitMQ. Assertions are
about what the user sees: stdout, stderr, the exit status."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import requests

from ocho.cli.uploads import prepare_arguments
from tests import infra
from tests.infra import Stack, wait_for

OCHO = str(Path(sys.executable).parent / "ocho")
SUBMITTED = re.compile(r"ocho: job ([0-9a-f-]{36}) submitted")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("cli-stack")
    tools = infra.clone_tools_dir(workdir / "tools")
    stack = Stack(workdir, amqp_url, tools_dir=tools, kill_grace=1)
    stack.start_gateway()
    stack.start_worker(concurrency=4)
    yield stack
    stack.stop()


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """The operator's working directory, with a file in it and one in a subdirectory."""
    (tmp_path / "notes.txt").write_text("hello from notes\n")
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "zookeeper.yml").write_text("cluster: zookeeper\n")
    return tmp_path


def cli_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCHO_")}
    return {**env, "OCHO_URL": url, **extra}


def ocho(stack: Stack, *args: str, cwd: Path | None = None, timeout: float = 30,
         **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OCHO, *args], cwd=cwd, env=cli_env(stack.url, **env),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def start_ocho(stack: Stack, *args: str, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([OCHO, *args], cwd=cwd, env=cli_env(stack.url),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def read_until(pipe: IO[bytes], text: str, timeout: float = 20) -> str:
    """What the pipe said up to and including `text` (a line-oriented read)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text.encode() not in seen:
        assert time.monotonic() < deadline, f"never saw {text!r}; saw {seen!r}"
        ready, _, _ = select.select([pipe], [], [], 0.1)
        if ready:
            chunk = os.read(pipe.fileno(), 4096)
            assert chunk, f"the pipe closed before {text!r}; saw {seen!r}"
            seen += chunk
    return seen.decode()


def job_state(stack: Stack, job_id: str) -> str:
    return requests.get(f"{stack.url}/jobs/{job_id}", timeout=10).json()["state"]


def submitted_id(stderr_text: str) -> str:
    match = SUBMITTED.search(stderr_text)
    assert match, stderr_text
    return match.group(1)


# -- running a tool ---------------------------------------------------------------------------


def test_exit_code_of_the_tool_passes_through(stack: Stack):
    done = ocho(stack, "exit", "3", "went wrong")
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr == "went wrong\n"


def test_a_named_local_file_is_uploaded_and_printed(stack: Stack, cwd: Path):
    done = ocho(stack, "cat", "notes.txt", cwd=cwd)
    assert (done.returncode, done.stdout, done.stderr) == (0, "hello from notes\n", "")


def test_a_file_in_a_subdirectory_is_uploaded_under_its_base_name(stack: Stack, cwd: Path):
    done = ocho(stack, "cat", "defs/zookeeper.yml", "notes.txt", cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "cluster: zookeeper\nhello from notes\n"


def test_deploy_takes_definitions_by_path_and_by_pattern(stack: Stack, cwd: Path):
    for name in ("zookeeper.yml", "redis.yml"):
        (cwd / "defs" / name).write_bytes((infra.ROOT / "definitions" / name).read_bytes())
    one = ocho(stack, "deploy", "--dry-run", "defs/zookeeper.yml", "-p", "3", cwd=cwd)
    assert one.returncode == 0, one.stderr
    assert "ocho.io/cluster: zookeeper" in one.stdout and "replicas: 3" in one.stdout
    # Quoted, the pattern is not expanded by the shell: ocho uploads what it matches.
    both = ocho(stack, "deploy", "--dry-run", "defs/*.yml", cwd=cwd)
    assert both.returncode == 0, both.stderr
    assert both.stdout.count("kind: ReplicationController") == 2
    assert "ocho.io/cluster: redis" in both.stdout


def test_output_arrives_while_the_job_runs(stack: Stack):
    process = start_ocho(stack, "-v", "sleep", "5")
    job_id = submitted_id(read_until(process.stderr, "submitted"))
    seen = read_until(process.stdout, "tick 1")
    assert seen.startswith("pid=")
    assert job_state(stack, job_id) == "running"
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert (seen + out.decode()).endswith("done\n")


def test_time_limit_ends_with_124_and_says_so(stack: Stack):
    done = ocho(stack, "--timeout", "1", "sleep", "30")
    assert done.returncode == 124
    assert done.stdout.startswith("pid=")
    assert re.search(r"^ocho: job \S+ timed out: exceeded its time limit of 1 s$",
                     done.stderr, re.M), done.stderr


def test_unknown_tool_is_refused_in_one_line(stack: Stack):
    done = ocho(stack, "no-such-tool")
    assert done.returncode == 125
    assert done.stderr.startswith("ocho: unknown tool 'no-such-tool'; available tools: ")
    assert "cat" in done.stderr and done.stderr.count("\n") == 1


def test_detach_prints_the_job_id_and_the_job_runs_on(stack: Stack):
    done = ocho(stack, "--detach", "exit", "4")
    assert done.returncode == 0
    job_id = done.stdout.strip()
    wait_for(lambda: job_state(stack, job_id) == "failed", what="the detached job to end")
    follow = ocho(stack, "output", job_id, "--follow")
    assert follow.returncode == 4


# -- Ctrl-C, cancel, reattach -----------------------------------------------------------------


def test_ctrl_c_then_yes_cancels_the_job(stack: Stack):
    process = start_ocho(stack, "-v", "sleep", "60")
    job_id = submitted_id(read_until(process.stderr, "submitted"))
    read_until(process.stdout, "pid=")
    process.send_signal(signal.SIGINT)
    assert f"cancel job {job_id}? [y/N]" in read_until(process.stderr, "[y/N]")
    _, err = process.communicate(b"y\n", timeout=20)
    assert process.returncode == 130
    assert f"job {job_id} cancelled on request" in err.decode()
    assert job_state(stack, job_id) == "cancelled"


def test_ctrl_c_then_no_detaches_and_the_job_can_be_reattached_and_cancelled(stack: Stack):
    process = start_ocho(stack, "-v", "sleep", "60")
    job_id = submitted_id(read_until(process.stderr, "submitted"))
    read_until(process.stdout, "pid=")
    process.send_signal(signal.SIGINT)
    read_until(process.stderr, "[y/N]")
    _, err = process.communicate(b"n\n", timeout=20)
    assert process.returncode == 130
    assert f"reattach: ocho output {job_id} --follow" in err.decode()
    assert job_state(stack, job_id) == "running"

    follower = start_ocho(stack, "output", job_id, "--follow")
    read_until(follower.stdout, "tick")
    cancelled = ocho(stack, "cancel", job_id)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"job {job_id} cancelled\n")
    assert job_state(stack, job_id) == "cancelled"
    _, err = follower.communicate(timeout=20)
    assert follower.returncode == 130
    assert f"job {job_id} cancelled on request" in err.decode()


def test_cancel_of_an_unknown_job_is_refused(stack: Stack):
    done = ocho(stack, "cancel", "3f1c0000-0000-4000-8000-000000000000")
    assert done.returncode == 125
    assert done.stderr == ("ocho: no job '3f1c0000-0000-4000-8000-000000000000'; "
                           "`ocho jobs` lists the recent ones\n")


def test_following_survives_a_gateway_restart_without_losing_or_repeating_output(
        tmp_path: Path, fresh_amqp_url: str, tools_dir: Path):
    restarted = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir)
    try:
        restarted.start_gateway()
        restarted.start_worker()
        process = start_ocho(restarted, "sleep", "4")
        seen = read_until(process.stdout, "tick 1")
        assert restarted.gateway is not None
        restarted.gateway.send_signal(signal.SIGTERM)
        restarted.gateway.wait(timeout=15)
        restarted.start_gateway()  # same port, same store
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        lines = (seen + out.decode()).splitlines()
        assert lines[0].startswith("pid=") and lines[-1] == "done"
        assert lines[1:-1] == [f"tick {n}" for n in range(1, len(lines) - 1)]
        assert "reconnecting" in err.decode()
    finally:
        restarted.stop()


def test_a_job_no_worker_takes_is_pointed_out_and_can_be_cancelled(tmp_path: Path,
                                                                   fresh_amqp_url: str,
                                                                   tools_dir: Path):
    no_workers = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir)
    try:
        no_workers.start_gateway()
        process = start_ocho(no_workers, "-v", "exit", "0")
        job_id = submitted_id(read_until(process.stderr, "submitted"))
        assert "(is ocho-worker running?)" in read_until(process.stderr, "running?)")
        process.send_signal(signal.SIGINT)
        read_until(process.stderr, "[y/N]")
        _, err = process.communicate(b"y\n", timeout=20)
        assert process.returncode == 130, err.decode()
        assert f"job {job_id} cancelled" in err.decode()
        assert job_state(no_workers, job_id) == "cancelled"
    finally:
        no_workers.stop()


# -- the other commands -----------------------------------------------------------------------


def test_help_lists_the_tools_and_shows_one_tools_help(stack: Stack):
    listing = ocho(stack, "help")
    assert listing.returncode == 0
    assert re.search(r"^  cat\s+cat FILE\.\.\.: print uploaded files", listing.stdout, re.M)
    assert re.search(r"^  sleep\s+sleep SECONDS", listing.stdout, re.M)
    one = ocho(stack, "help", "deploy")
    assert one.returncode == 0
    assert one.stdout.startswith("usage: deploy")


def test_jobs_and_status_show_a_finished_job(stack: Stack):
    run = ocho(stack, "-v", "exit", "5")
    job_id = submitted_id(run.stderr)
    table = ocho(stack, "jobs", "--tool", "exit", "--state", "failed", "-n", "50")
    assert table.returncode == 0
    row = next(line for line in table.stdout.splitlines() if line.startswith(job_id))
    assert row.split()[1:3] == ["failed", "5"] and row.endswith("exit 5")
    status = ocho(stack, "status", job_id)
    assert re.search(r"^state\s+failed, exit code 5$", status.stdout, re.M), status.stdout
    as_json = json.loads(ocho(stack, "status", job_id, "--json").stdout)
    assert (as_json["id"], as_json["exit_code"]) == (job_id, 5)


def test_output_prints_what_a_job_wrote(stack: Stack, cwd: Path):
    job_id = ocho(stack, "--detach", "cat", "notes.txt", cwd=cwd).stdout.strip()
    wait_for(lambda: job_state(stack, job_id) == "succeeded", what="the job to end")
    done = ocho(stack, "output", job_id)
    assert (done.returncode, done.stdout) == (0, "hello from notes\n")


# -- errors the user can act on ---------------------------------------------------------------


@pytest.mark.parametrize("command", [["exit", "0"], ["jobs"], ["help"]])
def test_unreachable_gateway_is_one_line_without_traceback(command: list[str]):
    url = f"http://127.0.0.1:{infra.free_port()}"
    done = subprocess.run([OCHO, *command], env=cli_env(url), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 126
    assert done.stdout == ""
    assert done.stderr == (f"ocho: cannot reach the gateway at {url}: connection refused — "
                           "is it running? (make run)\n")


def test_token_is_required_when_the_gateway_has_tokens(tmp_path: Path, fresh_amqp_url: str,
                                                       tools_dir: Path):
    guarded = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir, tokens="s3cret-s3cret-s3cret")
    try:
        guarded.start_gateway()
        guarded.start_worker()
        without = ocho(guarded, "exit", "0")
        assert without.returncode == 126
        assert without.stderr.startswith(f"ocho: the gateway at {guarded.url} wants a token: "
                                         "set OCHO_TOKEN or pass --token")
        assert without.stderr.count("\n") == 1
        assert ocho(guarded, "exit", "0", OCHO_TOKEN="s3cret-s3cret-s3cret").returncode == 0
        assert ocho(guarded, "--token", "s3cret-s3cret-s3cret", "exit", "6").returncode == 6
    finally:
        guarded.stop()


def test_bad_ocho_option_is_refused_before_anything_is_sent(stack: Stack):
    done = ocho(stack, "--timeout", "soon", "sleep", "1")
    assert done.returncode == 125
    assert done.stderr == "ocho: --timeout must be a whole number of seconds, not 'soon'\n"


# -- the interactive shell --------------------------------------------------------------------


def test_shell_runs_lines_keeps_history_and_exits(stack: Stack, tmp_path: Path):
    controller, terminal = pty.openpty()
    env = cli_env(stack.url, HOME=str(tmp_path))
    process = subprocess.Popen([OCHO], stdin=terminal, stdout=terminal, stderr=terminal,
                               env=env, cwd=tmp_path, close_fds=True)
    os.close(terminal)
    try:
        screen = PtyScreen(controller)
        screen.expect("ocho> ")
        # `exit` leaves the shell: the test tool of that name runs with `run`.
        screen.type("run exit 3 'from the shell'\n")
        assert "from the shell" in screen.expect("[exit 3]")
        screen.expect("ocho> ")
        screen.type("help\n")
        listing = screen.expect("ocho> ")
        assert re.search(r"cat\s+cat FILE", listing)
        # The tool's name is not repeated in its summary.
        assert re.search(r"deploy\s+one ReplicationController", listing), listing
        # `clear` stays in the shell: it clears the screen, nothing is sent.
        jobs_before = requests.get(f"{stack.url}/jobs", timeout=10).json()["jobs"]
        screen.type("clear\n")
        assert "\x1b[2J" in screen.expect("ocho> ")
        assert requests.get(f"{stack.url}/jobs", timeout=10).json()["jobs"] == jobs_before
        # A tool's escape sequences are shown, not obeyed, on a terminal.
        (tmp_path / "colour.txt").write_bytes(b"\x1b[31mred\x1b]0;title\x07 \xe2\x80\xaeevil\n")
        screen.type("cat colour.txt\n")
        shown = screen.expect("ocho> ")
        assert "\\x1b[31mred\\x1b]0;title\\x07 \\u202eevil" in shown, shown
        assert "\x1b[31m" not in shown
        screen.type("exit\n")
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    history = (tmp_path / ".ocho_history").read_text()
    assert "run exit 3 'from the shell'" in history and "help" in history


class PtyScreen:
    """What a terminal shows: read from a pty until some text appears."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = ""

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            assert time.monotonic() < deadline, f"never saw {text!r}; saw {self.seen!r}"
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                self.seen += os.read(self.fd, 4096).decode(errors="replace")
        shown, _, self.seen = self.seen.partition(text)
        return shown + text


# -- without a gateway ------------------------------------------------------------------------


def test_without_arguments_and_without_a_terminal_it_prints_usage():
    done = subprocess.run([OCHO], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30, env=cli_env("http://127.0.0.1:9"))
    assert done.returncode == 125
    assert done.stderr.startswith("usage: ocho [OPTIONS] TOOL [ARGS...]")


def test_start_up_imports_nothing_heavy():
    probe = ("import sys, ocho.cli; heavy = {'pika', 'flask', 'marshmallow', 'kubernetes', "
             "'requests', 'yaml'} & {m.split('.')[0] for m in sys.modules}; print(sorted(heavy))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout.strip() == "[]"


def test_local_files_and_patterns_become_base_names(cwd: Path, monkeypatch):
    monkeypatch.chdir(cwd)
    (cwd / "defs" / "redis.yml").write_text("cluster: redis\n")
    args, uploads = prepare_arguments(
        ["defs/zookeeper.yml", "-p", "3", "--notes=notes.txt", "defs/*.yml", "zoo*", "defs"],
        upload=True)
    assert args == ["zookeeper.yml", "-p", "3", "--notes=notes.txt", "*.yml", "zoo*", "defs"]
    assert sorted(uploads.paths) == ["notes.txt", "redis.yml", "zookeeper.yml"]
    assert prepare_arguments(["notes.txt"], upload=False)[1].paths == {}


def test_files_the_job_could_not_see_are_refused_before_submitting(cwd: Path):
    (cwd / ".env").write_text("SECRET=1\n")
    (cwd / "other").mkdir()
    (cwd / "other" / "notes.txt").write_text("a different file\n")
    unreachable = cli_env(f"http://127.0.0.1:{infra.free_port()}")
    hidden = subprocess.run([OCHO, "cat", ".env"], cwd=cwd, env=unreachable,
                            capture_output=True, text=True, timeout=30)
    assert hidden.returncode == 125
    assert hidden.stderr.startswith("ocho: cannot upload '.env': ")
    clash = subprocess.run([OCHO, "cat", "notes.txt", "other/notes.txt"], cwd=cwd,
                           env=unreachable, capture_output=True, text=True, timeout=30)
    assert clash.returncode == 125
    assert clash.stderr == ("ocho: two files would be uploaded as 'notes.txt' (notes.txt and "
                            "other/notes.txt); the job sees one directory, so rename one\n")


def test_a_word_that_looks_like_a_missing_file_is_refused_with_a_hint(stack: Stack,
                                                                     tmp_path: Path):
    (tmp_path / "definitions").mkdir()
    (tmp_path / "definitions" / "zookeeper.yml").write_text("cluster: zookeeper\n")
    jobs_before = requests.get(f"{stack.url}/jobs", timeout=10).json()["jobs"]
    missing = ocho(stack, "deploy", "zookeeper.yml", "-p", "3", cwd=tmp_path)
    assert missing.returncode == 125
    assert missing.stderr == (
        "ocho: zookeeper.yml: no such local file (did you mean definitions/zookeeper.yml?); "
        "nothing was sent. To pass the word to the tool as text, use --no-upload\n")
    in_a_dir = ocho(stack, "cat", "definitions/redis.txt", cwd=tmp_path)
    assert in_a_dir.returncode == 125 and "definitions/redis.txt: no such local file" \
        in in_a_dir.stderr
    assert requests.get(f"{stack.url}/jobs", timeout=10).json()["jobs"] == jobs_before
    as_text = ocho(stack, "--no-upload", "args", "zookeeper.yml", cwd=tmp_path)
    assert as_text.returncode == 0 and '"zookeeper.yml"' in as_text.stdout
    # Words that are not meant as files still go as text: patterns, plain words.
    assert ocho(stack, "args", "zoo*", "dev", cwd=tmp_path).returncode == 0


def test_completion_scripts_offer_the_catalogs_tools(stack: Stack, tmp_path: Path):
    script = ocho(stack, "completion", "bash").stdout
    (tmp_path / "ocho.bash").write_text(script)
    probe = ("source ocho.bash; complete() { :; }; "
             "COMP_WORDS=(ocho de); COMP_CWORD=1; _ocho_complete; echo \"${COMPREPLY[*]}\"; "
             "COMP_WORDS=(ocho help ca); COMP_CWORD=2; _ocho_complete; echo \"${COMPREPLY[*]}\"; "
             "COMP_WORDS=(ocho --ur); COMP_CWORD=1; _ocho_complete; echo \"${COMPREPLY[*]}\"")
    env = cli_env(stack.url, PATH=f"{Path(OCHO).parent}:{os.environ['PATH']}")
    done = subprocess.run(["bash", "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["deploy", "cat", "--url"], done.stdout
    for shell in ("zsh", "fish"):
        text = ocho(stack, "completion", shell).stdout
        assert "ocho completion --tools" in text
    names = ocho(stack, "completion", "--tools").stdout.split()
    assert {"deploy", "grep", "cat"} <= set(names)
    down = subprocess.run([OCHO, "completion", "--tools"], capture_output=True, text=True,
                          timeout=30, env=cli_env(f"http://127.0.0.1:{infra.free_port()}"))
    assert (down.returncode, down.stdout, down.stderr) == (0, "", "")


def test_piped_output_keeps_control_characters_as_they_are(stack: Stack, tmp_path: Path):
    """Only a terminal gets escapes (see the shell test); a pipe gets the bytes."""
    raw = b"\x1b[31mred\x1b[0m\n\xe2\x80\xaeevil\x07\n"
    (tmp_path / "colour.txt").write_bytes(raw)
    done = subprocess.run([OCHO, "cat", "colour.txt"], cwd=tmp_path, env=cli_env(stack.url),
                          capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stdout == raw
