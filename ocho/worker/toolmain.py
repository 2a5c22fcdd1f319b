"""Run a tool script in a forked child of the tool zygote as a fresh
`python -P -S script.py ARGS` would run it.

Invariants (what a fresh interpreter gives a script, and so this does too):
- signal dispositions and the signal mask are those the zygote's interpreter
  had when it started (SIGINT raises KeyboardInterrupt, SIGPIPE and SIGXFSZ
  ignored, everything else default), captured by `capture()` before the
  zygote changed anything;
- sys.stdin/stdout/stderr are new text streams on fds 0/1/2, built with the
  same encoding, errors and buffering as the interpreter built its own;
- `__main__` is a new module holding only what CPython puts there, sys.argv
  is [script, *args], and neither the script's directory nor '' is on sys.path;
- exit: `sys.exit(code)` gives that code, an uncaught exception prints its
  traceback (without frames of this module) and gives 1, an uncaught
  KeyboardInterrupt ends the process by SIGINT; non-daemon threads are waited
  for, atexit functions run, stdio is flushed (a failed stdout flush gives
  120), then os._exit: nothing of the zygote's own clean-up ever runs here.
"""

from __future__ import annotations

import atexit
import builtins
import dataclasses
import io
import os
import signal
import sys
import threading
import types
from importlib.machinery import SourceFileLoader
from typing import NoReturn

# CPython's exit status when flushing stdout at exit fails.
FLUSH_FAILED_STATUS = 120


@dataclasses.dataclass(frozen=True)
class StreamShape:
    encoding: str
    errors: str
    write_through: bool
    line_buffering: bool


@dataclasses.dataclass(frozen=True)
class FreshState:
    """What a freshly started interpreter looked like, before the zygote changed it."""

    handlers: dict[int, object]
    mask: frozenset[int]
    streams: tuple[StreamShape, StreamShape, StreamShape]


def capture() -> FreshState:
    handlers = {}
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except (ValueError, OSError):
            continue
        if handler is not None:
            handlers[sig] = handler
    mask = frozenset(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    streams = tuple(StreamShape(s.encoding, s.errors,  # type: ignore[arg-type]
                                s.write_through, s.line_buffering)  # type: ignore[union-attr,arg-type]
                    for s in (sys.stdin, sys.stdout, sys.stderr))
    return FreshState(handlers, mask, streams)  # type: ignore[arg-type]


def restore_signals(state: FreshState) -> None:
    for sig, handler in state.handlers.items():
        try:
            signal.signal(sig, handler)  # type: ignore[arg-type]
        except (ValueError, OSError, TypeError):
            pass  # SIGKILL, SIGSTOP and the like
    signal.pthread_sigmask(signal.SIG_SETMASK, state.mask)


def fresh_stdio(state: FreshState) -> None:
    """New sys.std* on fds 0-2, shaped as CPython's create_stdio() shapes them."""
    names = ("<stdin>", "<stdout>", "<stderr>")
    streams = []
    for fd, (shape, name) in enumerate(zip(state.streams, names, strict=True)):
        writing = fd > 0
        unbuffered = writing and shape.write_through
        # Open for the life of the process, as the interpreter's own (closefd=False).
        buffer = open(fd, "wb" if writing else "rb",  # noqa: SIM115
                      buffering=0 if unbuffered else -1, closefd=False)
        raw = buffer if unbuffered else buffer.raw  # type: ignore[union-attr,attr-defined]
        raw.name = name  # type: ignore[misc,union-attr]
        text = io.TextIOWrapper(buffer, shape.encoding, shape.errors, "\n",  # type: ignore[arg-type]
                                shape.line_buffering, shape.write_through)
        text.mode = "w" if writing else "r"  # type: ignore[misc]
        streams.append(text)
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams  # type: ignore[misc]


def rehearse(state: FreshState) -> None:
    """In a spare tool process, before it has a job: go through what run_script will do,
    on nothing, so that the zygote's pages it writes are copied now rather than on the
    job's path. Leaves nothing behind that run_script does not set again."""
    restore_signals(state)
    fresh_stdio(state)  # on the zygote's fds 0-2; built again on the job's
    os.environ["OCHO_SPARE"] = "1"
    del os.environ["OCHO_SPARE"]
    compile("", "<spare>", "exec", dont_inherit=True)


def run_script(state: FreshState, script: str, argv: list[str]) -> NoReturn:
    """Become the tool: run `script` (an absolute path) as __main__, then exit."""
    restore_signals(state)
    fresh_stdio(state)
    sys.argv = list(argv)
    sys.orig_argv = [sys.executable, "-P", "-S", *argv]
    script_dir = os.path.dirname(script)
    sys.path[:] = [p for p in sys.path if p not in ("", ".", script_dir)]
    status = _run_main(script)
    os._exit(_finalize(status))


def _main_module(script: str) -> types.ModuleType:
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__cached__ = None  # type: ignore[attr-defined]
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    main.__annotations__ = {}
    main.__loader__ = SourceFileLoader("__main__", script)
    sys.modules["__main__"] = main
    return main


def _run_main(script: str) -> int:
    """The script's exit status; -SIGINT for an uncaught KeyboardInterrupt."""
    try:
        main = _main_module(script)
        with open(script, "rb") as handle:
            source = handle.read()
        code = compile(source, script, "exec", dont_inherit=True)
        exec(code, main.__dict__)  # the tool itself, in a process of its own
    except SystemExit as exc:
        return _exit_status(exc)
    except BaseException as exc:  # noqa: BLE001 - reported as the interpreter would
        # Drop this function's frame: the traceback starts in the script, as with python.
        traceback = exc.__traceback__.tb_next if exc.__traceback__ else None
        exc.__traceback__ = traceback
        _print_uncaught(exc)
        return -signal.SIGINT if isinstance(exc, KeyboardInterrupt) else 1
    return 0


def _print_uncaught(exc: BaseException) -> None:
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
    try:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    except BaseException:  # noqa: BLE001 - a broken hook must not hide the exit
        pass


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        pass
    return 1


def _finalize(status: int) -> int:
    """Py_FinalizeEx's visible part: threads, atexit, flushing."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # waits for non-daemon threads
    except BaseException:  # noqa: BLE001
        pass
    atexit._run_exitfuncs()
    for stream, failed_status in ((sys.stdout, FLUSH_FAILED_STATUS), (sys.stderr, None)):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            if failed_status is not None and status >= 0:
                status = failed_status
    if status == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        status = 128 + signal.SIGINT
    return status
