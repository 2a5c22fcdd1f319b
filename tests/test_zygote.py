"""Warm tool starts (ocho/worker/zygote.py) against cold ones: what a tool
sees and does is the same, whichever way it started; and the zygote's own
failures never fail a job.

The runner is driven in-process here, so this test process is the "worker":
it becomes a child subreaper.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocho.settings import Settings
from ocho.worker import reaper, runner, sibling_fork, zygote
from tests.infra import wait_for

HERE = Path(__file__).resolve().parent
TOOLS = HERE / "zygote_tools"


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("tools")
    for source in (HERE / "tools", TOOLS):
        shutil.copytree(source, target, dirs_exist_ok=True)
    # Kept out of the tree: nothing may parse it but the interpreter under test.
    (target / "broken.py").write_text('print("never")\ndef (:\n')
    return target


@pytest.fixture(scope="module", params=["fork-once", "fork-twice", "fork-once-no-spares"])
def warm(tools: Path, request: pytest.FixtureRequest) -> Iterator[zygote.Zygote]:
    """A zygote forking each tool once (CLONE_PARENT), or twice where that cannot be
    done; with spare tool processes forked ahead (retired after 0.5 s here, so that
    the tests see them come and go), or without: every warm test runs each way."""
    handle = zygote.Zygote(runner.zygote_environment(Settings(tools_dir=tools)),
                           fork_once=request.param != "fork-twice",
                           spare_idle_s=0.0 if request.param.endswith("no-spares") else 0.5)
    assert handle.wait_ready(60), "the zygote never became ready"
    yield handle
    handle.close()  # the process stays a subreaper: tests/kube/toolrun.py's zygote may need it


@pytest.fixture(scope="module", params=["fork-once", "fork-twice"])
def spared(tools: Path, request: pytest.FixtureRequest) -> Iterator[zygote.Zygote]:
    """A zygote with spares retired after 0.5 s, for the tests of the spares themselves."""
    handle = zygote.Zygote(runner.zygote_environment(Settings(tools_dir=tools)),
                           fork_once=request.param == "fork-once", spare_idle_s=0.5)
    assert handle.wait_ready(60), "the zygote never became ready"
    yield handle
    handle.close()


def run(tools: Path, handle: zygote.Zygote | None, tool: str, *args: str,
        files: dict[str, bytes] | None = None, timeout: int = 30,
        cancel_after: float | None = None, **settings: object) -> tuple[runner.Outcome, str]:
    mode = "warm" if handle is not None else "cold"
    config = Settings(tools_dir=tools, tool_start=mode, kill_grace=1.0, **settings)
    chunks: list[tuple[str, str]] = []
    control = runner.Control(zygote=handle)
    if cancel_after is not None:
        control.on_spawn = lambda pid: _cancel_later(control, cancel_after)
    job = runner.Job(str(uuid.uuid4()), tool, list(args), files or {}, timeout)
    outcome = runner.run(config, job, lambda s, o, d: chunks.append((s, d)), control)
    chunks += [(c["stream"], c["data"]) for c in outcome.tail]
    text = "".join(f"[{stream}]{data}" for stream, data in _merge(chunks))
    # Paths of the job's directory differ from run to run.
    return outcome, re.sub(r"/[^\s\"']*/ocho-[0-9a-f]{8}-[a-z0-9_]+", "<dir>", text)


def _merge(chunks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: list[tuple[str, str]] = []
    for stream, data in chunks:
        if merged and merged[-1][0] == stream:
            merged[-1] = (stream, merged[-1][1] + data)
        else:
            merged.append((stream, data))
    return merged


def _cancel_later(control: runner.Control, seconds: float) -> None:
    import threading

    threading.Timer(seconds, control.cancel.set).start()


def both(tools: Path, warm: zygote.Zygote, tool: str, *args: str,
         **options: object) -> tuple[tuple[runner.Outcome, str], tuple[runner.Outcome, str]]:
    pid_before = warm.pid
    hot = run(tools, warm, tool, *args, **options)
    cold = run(tools, None, tool, *args, **options)
    assert warm.pid == pid_before  # the zygote ran nothing of the tool's
    return hot, cold


@pytest.mark.parametrize("kind", ["raise", "exit-message", "exit-code", "exit-none", "sigterm",
                                  "keyboard", "thread", "atexit", "syntax", "order", "unicode",
                                  "os-exit"])
def test_a_tool_ends_the_same_warm_or_cold(tools: Path, warm: zygote.Zygote, kind: str):
    (hot, hot_text), (cold, cold_text) = both(tools, warm, "behave", kind)
    assert (hot.state, hot.exit_code, hot.reason) == (cold.state, cold.exit_code, cold.reason)
    assert hot_text == cold_text
    assert hot_text.startswith("[stdout]start\n")


def test_a_script_that_does_not_compile_fails_the_same(tools: Path, warm: zygote.Zygote):
    (hot, hot_text), (cold, cold_text) = both(tools, warm, "broken")
    assert hot.exit_code == cold.exit_code == 1
    assert hot_text == cold_text
    assert "SyntaxError" in hot_text and "never" not in hot_text


def test_the_interpreter_a_tool_sees_is_the_same(tools: Path, warm: zygote.Zygote):
    uploads = {"yaml.py": b"raise SystemExit('the uploaded yaml.py was imported')\n"}
    (hot, hot_text), (cold, cold_text) = both(tools, warm, "introspect", "x", "y z",
                                              files=uploads, tool_memory_bytes=1024**3)
    assert hot.state == cold.state == "succeeded", hot_text + cold_text
    seen = json.loads(hot_text.removeprefix("[stdout]"))
    assert seen == json.loads(cold_text.removeprefix("[stdout]"))
    assert seen["argv"] == ["introspect.py", "x", "y z"]
    assert not seen["yaml_from_job_dir"] and not seen["cwd_on_path"]
    assert seen["ppid"] == os.getpid()  # the worker, as with Popen
    assert seen["leader"] and seen["fds"] == [0, 1, 2, 3]  # 3: listdir's own
    assert seen["limits"]["RLIMIT_AS"] == [1024**3, 1024**3]
    assert seen["limits"]["RLIMIT_NOFILE"] == [1024, 1024]
    assert seen["limits"]["RLIMIT_CPU"] == [65, 65]


def test_the_environment_is_the_same(tools: Path, warm: zygote.Zygote):
    (hot, hot_text), (cold, cold_text) = both(tools, warm, "env")
    job_id = re.compile(r"OCHO_JOB_ID=\S+")
    assert job_id.sub("", hot_text) == job_id.sub("", cold_text)
    assert "OCHO_JOB_ID=" in hot_text and "HOME=<dir>" in hot_text


def test_jobs_share_no_state(tools: Path, warm: zygote.Zygote):
    """Each job is a fresh fork: random seeds differ, modules' state does not carry over."""
    script = tools / "state.py"
    script.write_text("import json, random, sys\n"
                      "import ocho.kube as k\n"
                      "print(json.dumps([random.random(), getattr(k, 'mark', None)]))\n"
                      "k.mark = 'set by a job'\n")
    first = json.loads(run(tools, warm, "state")[1].removeprefix("[stdout]"))
    second = json.loads(run(tools, warm, "state")[1].removeprefix("[stdout]"))
    assert first[1] is None and second[1] is None
    assert first[0] != second[0]


def test_timeout_and_cancel_kill_the_whole_group(tools: Path, warm: zygote.Zygote):
    outcome, text = run(tools, warm, "sleep", "30", "2", timeout=1)
    assert outcome.state == "timed_out"
    group = int(re.search(r"pgid=(\d+)", text).group(1))
    assert warm.pid != group
    wait_for(lambda: not _alive_in_group(group), timeout=2, what="the tool's group to die")
    started = time.monotonic()
    outcome, text = run(tools, warm, "sleep", "30", "2", cancel_after=0.5)
    assert outcome.state == "cancelled"
    assert time.monotonic() - started < 4
    group = int(re.search(r"pgid=(\d+)", text).group(1))
    wait_for(lambda: not _alive_in_group(group), timeout=2, what="the tool's group to die")
    assert reaper.reap_orphans() == 0  # the runner already waited for what the tool left


def _alive_in_group(pgid: int) -> bool:
    from tests.infra import processes_in_group

    return bool(processes_in_group(pgid))


def test_a_killed_zygote_costs_no_job(tools: Path, warm: zygote.Zygote):
    """Killed while a job runs: that job ends as it would have; the next starts
    cold while the zygote is down; then a new zygote takes over."""
    old = warm.pid
    assert old is not None
    killed: list[int] = []

    def kill_zygote(pid: int) -> None:
        os.kill(old, signal.SIGKILL)
        killed.append(pid)

    config = Settings(tools_dir=tools)
    job = runner.Job(str(uuid.uuid4()), "exit", ["3"], {}, 30)
    outcome = runner.run(config, job, lambda *a: None,
                         runner.Control(zygote=warm, on_spawn=kill_zygote))
    assert killed and (outcome.state, outcome.exit_code) == ("failed", 3)
    wait_for(lambda: warm.pid != old, timeout=5, what="the zygote to be seen dead")
    outcome, _ = run(tools, warm, "exit", "0")  # cold or warm: it succeeds
    assert outcome.state == "succeeded"
    assert warm.wait_ready(60)
    assert warm.pid not in (None, old)
    outcome, text = run(tools, warm, "introspect")
    assert outcome.state == "succeeded", text


def _spares(handle: zygote.Zygote) -> list[int]:
    """Live children of this process (the "worker") in the zygote's process group, but
    for the zygote itself: its spare tool process."""
    from tests.infra import processes_in_group

    if handle.pid is None:
        return []
    return [pid for pid in processes_in_group(handle.pid)
            if pid != handle.pid and _parent(pid) == os.getpid()]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return 0


def _zombie_children(since: int = 0) -> list[int]:
    """Children of this process that died and were not waited for (started at or after
    `since`, in clock ticks since boot)."""
    children = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(pid) for pid in (task / "children").read_text().split()]
    return [pid for pid in children
            if _gone(pid) and Path(f"/proc/{pid}").exists() and _started(pid) >= since]


def _started(pid: int) -> int:
    """When the process started, in clock ticks since boot (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError):
        return 0


def _ticks_now() -> int:
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return int(uptime * os.sysconf("SC_CLK_TCK")) - 1


def _reap_zombie_children() -> int:
    reaped = 0
    for pid in _zombie_children():
        with contextlib.suppress(ChildProcessError):
            reaped += bool(os.waitpid(pid, os.WNOHANG)[0])
    return reaped


def _with_a_spare(tools: Path, handle: zygote.Zygote) -> int:
    outcome, _ = run(tools, handle, "exit", "0")  # a job's end asks for a spare
    assert outcome.state == "succeeded"
    wait_for(lambda: len(_spares(handle)) == 1, timeout=5, what="a spare tool process")
    return _spares(handle)[0]


def test_the_next_job_s_tool_is_the_spare_forked_before_it_came(tools: Path,
                                                               warm: zygote.Zygote):
    if warm.spare_idle_s == 0:
        run(tools, warm, "exit", "0")
        time.sleep(0.2)
        assert _spares(warm) == []  # without spares, a tool is forked for its job
        return
    spare = _with_a_spare(tools, warm)
    outcome, text = run(tools, warm, "sleep", "0")
    assert outcome.state == "succeeded"
    assert f"pid={spare} pgid={spare} " in text  # it became the tool, a session leader


def test_an_idle_zygote_s_spare_exits_and_is_reaped(tools: Path, spared: zygote.Zygote):
    """Retired after spare_idle_s without a job: an idle worker holds no spare, and
    not even a zombie of it."""
    since = _ticks_now()
    spare = _with_a_spare(tools, spared)
    wait_for(lambda: not Path(f"/proc/{spare}").exists(), timeout=5,
             what="the idle spare to exit and be reaped")
    assert _spares(spared) == [] and _zombie_children(since) == []


def test_a_spare_that_died_costs_no_job(tools: Path, spared: zygote.Zygote):
    spare = _with_a_spare(tools, spared)
    zygote_pid = spared.pid
    os.kill(spare, signal.SIGKILL)
    outcome, text = run(tools, spared, "sleep", "0")
    assert outcome.state == "succeeded"
    assert f"pid={spare} " not in text and spared.pid == zygote_pid  # forked for the job
    wait_for(lambda: not Path(f"/proc/{spare}").exists(), timeout=5,
             what="the dead spare to be reaped")


def test_a_spare_that_answers_too_late_never_runs_the_job(tools: Path, spared: zygote.Zygote):
    """Stopped past the zygote's wait for its answer (2 s): the job gets a fork of its
    own right after that wait, and the spare, continued once the zygote gave up on it,
    never touches the job (the zygote confirms a handover before the spare may)."""
    import threading

    since = _ticks_now()
    spare = _with_a_spare(tools, spared)
    os.kill(spare, signal.SIGSTOP)
    threading.Timer(2.3, lambda: _signal(spare, signal.SIGCONT)).start()
    started = time.monotonic()
    outcome, text = run(tools, spared, "sleep", "0")
    assert outcome.state == "succeeded" and f"pid={spare} " not in text
    assert time.monotonic() - started < 5  # not the spawn's 10 s timeout
    wait_for(lambda: not Path(f"/proc/{spare}").exists(), timeout=5,
             what="the late spare to exit and be reaped")
    assert _zombie_children(since) == []


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def test_a_dead_spare_is_reaped_by_its_pidfd_not_its_pid(tools: Path, spared: zygote.Zygote):
    """A spare that died may be reaped by anyone (a job's end reaps the orphans) and
    its pid given to another child of the worker: that child is never touched."""
    import subprocess

    spare = _with_a_spare(tools, spared)
    os.kill(spare, signal.SIGKILL)
    wait_for(lambda: _gone(spare), timeout=5, what="the spare to die")
    reaper.reap_orphans()  # as a job's end would
    last_pid = Path("/proc/sys/kernel/ns_last_pid")
    with contextlib.suppress(OSError):
        last_pid.write_text(str(spare - 1))  # root: the next pid is the spare's
    innocent = subprocess.Popen(["sleep", "30"])
    try:
        outcome, _ = run(tools, spared, "exit", "0")  # the zygote finds the spare dead
        assert outcome.state == "succeeded"
        time.sleep(1.5)  # the worker's reaping of a retired spare gives up after 1 s
        assert innocent.poll() is None, f"pid {innocent.pid} (the spare's: {spare})"
    finally:
        innocent.kill()
        innocent.wait()


def test_a_spare_dies_with_its_zygote_and_is_reaped(tools: Path, spared: zygote.Zygote):
    spare = _with_a_spare(tools, spared)
    old = spared.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{spare}").exists(), timeout=5,
             what="the spare to exit with its zygote and be reaped")
    assert spared.wait_ready(60) and spared.pid not in (None, old)
    outcome, _ = run(tools, spared, "exit", "0")
    assert outcome.state == "succeeded"


def test_a_zygote_that_does_not_answer_means_a_cold_start(tools: Path, warm: zygote.Zygote):
    assert warm.wait_ready(60)
    pid = warm.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        original = zygote.SPAWN_TIMEOUT_S
        zygote.SPAWN_TIMEOUT_S = 0.5
        outcome, _ = run(tools, warm, "exit", "0")
    finally:
        zygote.SPAWN_TIMEOUT_S = original
        with contextlib.suppress(ProcessLookupError):  # the worker's side killed it
            os.kill(pid, signal.SIGCONT)
    assert outcome.state == "succeeded"
    assert warm.wait_ready(60) and warm.pid != pid


def _gone(pid: int) -> bool:
    """Dead, or a zombie nobody waited for yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_worker_s_zygote_holds_no_secret_and_dies_with_it(tmp_path: Path, fresh_amqp_url: str,
                                                           tools_dir: Path):
    """Through a real worker: a warm tool is in its job's pids cgroup with its
    rlimits; the zygote never saw the worker's secrets; a SIGKILLed worker
    leaves neither tool nor zygote nor spare behind."""
    from ocho.client import Client
    from tests.infra import Stack, processes_in_group

    shutil.copytree(TOOLS, tools_dir, dirs_exist_ok=True)
    stack = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir, tool_start="warm",
                  tokens="a-secret-token-of-the-portal", tool_memory_bytes=1024**3)
    try:
        worker = stack.start_worker(concurrency=2)
        zygote_pid = int(re.search(r"tool zygote (\d+) ready", stack.read_log("worker0.log"))[1])
        environ = Path(f"/proc/{zygote_pid}/environ").read_bytes().decode()
        assert "OCHO_AMQP_URL" not in environ and "a-secret-token" not in environ
        with Client(fresh_amqp_url) as client:
            result = client.wait(client.submit("introspect", files={"yaml.py": b"boom(\n"}),
                                 timeout=60)
            assert result.state == "succeeded", result.output
            seen = json.loads(result.output)
            assert f"ocho-worker-{worker.pid}/job-{result.id}" in seen["cgroup"][0]
            assert seen["limits"]["RLIMIT_AS"] == [1024**3, 1024**3]
            assert seen["ppid"] == worker.pid and not seen["yaml_from_job_dir"]
            job_id = client.submit("sleep", ["60", "2"])
            output = ""
            for event in client.events(job_id, timeout=60):
                output += event.get("data", "") if event["type"] == "output" else ""
                if "pgid=" in output:
                    break
            # A job's end asks for a spare: one waits in the zygote's process group.
            assert client.wait(client.submit("exit", ["0"]), timeout=60).state == "succeeded"
            wait_for(lambda: len(processes_in_group(zygote_pid)) == 2, timeout=5,
                     what="the zygote's spare")
        group = int(re.search(r"pgid=(\d+)", output)[1])
        worker.kill()
        worker.wait()
        wait_for(lambda: not processes_in_group(group), timeout=5, what="the tool's group to die")
        wait_for(lambda: _gone(zygote_pid), timeout=5, what="the zygote to die with its worker")
        wait_for(lambda: not processes_in_group(zygote_pid), timeout=5,
                 what="nothing of the zygote's group (a spare) to outlive it")
    finally:
        stack.stop()
        # What the killed worker left was adopted by this process, a child subreaper.
        _reap_zombie_children()


def test_a_sibling_fork_is_a_fork_whose_child_is_the_caller_s_parent_s():
    """ocho.worker.sibling_fork as the zygote uses it: in a single-threaded child of
    this process, the sibling it forks is this process's child (whose exit status
    this process reads), glibc knows the sibling's own tid and its thread state is a
    fork child's, and os.fork's hooks ran in it (random is reseeded, so two siblings
    draw different numbers)."""
    assert sibling_fork.make() is None or os.uname().machine in sibling_fork.MACHINES
    read_end, write_end = os.pipe()
    caller = os.fork()
    if caller == 0:  # the zygote's place: single-threaded
        try:
            fork = sibling_fork.make()
            if fork is None:
                os.write(write_end, b"unsupported\n")
                os._exit(0)
            for _ in range(2):
                if fork() == 0:
                    os.write(write_end, json.dumps(_seen_by_sibling()).encode() + b"\n")
                    os._exit(7)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as lines:
        seen = [json.loads(line) for line in lines if line != "unsupported\n"]
    statuses = {pid: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                for pid in [caller, *(sibling["pid"] for sibling in seen)]}
    assert statuses[caller] == 0
    if os.uname().machine not in sibling_fork.MACHINES:
        assert not seen
        return
    assert len(seen) == 2
    for sibling in seen:
        assert sibling["ppid"] == os.getpid() and statuses[sibling["pid"]] == 7
        assert sibling["glibc_tid"] == sibling["tid"] == sibling["pid"]
        assert sibling["robust_list"] and sibling["tid_address"]
    assert seen[0]["random"] != seen[1]["random"]


def _seen_by_sibling() -> dict[str, object]:
    import ctypes
    import random
    import threading

    libc = ctypes.CDLL(None)
    libc.pthread_self.restype = ctypes.c_void_p
    libc.syscall.restype = ctypes.c_long
    clock = ctypes.c_int()
    libc.pthread_getcpuclockid(ctypes.c_void_p(libc.pthread_self()), ctypes.byref(clock))
    robust_head, size = ctypes.c_void_p(), ctypes.c_size_t()
    libc.syscall(ctypes.c_long(sibling_fork.SYS_GET_ROBUST_LIST), ctypes.c_long(0),
                 ctypes.byref(robust_head), ctypes.byref(size))
    tid_address = ctypes.c_void_p()
    libc.prctl(40, ctypes.byref(tid_address), 0, 0, 0)  # PR_GET_TID_ADDRESS
    return {"pid": os.getpid(), "ppid": os.getppid(), "tid": threading.get_native_id(),
            "glibc_tid": ~(clock.value >> 3), "random": random.random(),
            # What glibc's own fork leaves: the robust futex list registered, the
            # tid cleared at exit (pthread_join-style waiters rely on both).
            "robust_list": bool(robust_head.value), "tid_address": bool(tid_address.value)}
