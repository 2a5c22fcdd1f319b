"""The tool catalog: the `*.py` scripts in the tools directory, their summaries and
their `--help`.

A tool's summary is the first line of its module docstring (read without running
it); its help is what `python tool.py --help` prints, run without a shell and
with a short timeout, cached until the file changes. `help_text` is what a
`help [TOOL]` request answers, the same over HTTP (POST /shell) and AMQP (the
worker's built-in `help`).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from ocho.errors import OchoError, UnknownTool
from ocho.message import TOOL_NAME

HELP_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class _Cached:
    mtime_ns: int
    text: str


class ToolCatalog:
    def __init__(self, tools_dir: Path) -> None:
        self.tools_dir = Path(tools_dir).resolve()
        self._lock = threading.Lock()
        self._summaries: dict[str, _Cached] = {}
        self._helps: dict[str, _Cached] = {}

    def names(self) -> list[str]:
        """Tools a job may run: `name.py` files, not private helpers (`_name.py`)."""
        try:
            paths = sorted(self.tools_dir.glob("*.py"))
        except OSError:
            return []
        return [p.stem for p in paths
                if not p.stem.startswith("_") and TOOL_NAME.match(p.stem) and p.is_file()]

    def path(self, name: str) -> Path:
        """The tool's script, or UnknownTool naming the tools there are."""
        if TOOL_NAME.match(name) and not name.startswith("_"):
            path = self.tools_dir / f"{name}.py"
            if path.is_file():
                return path
        raise UnknownTool(name, self.names())

    def summary(self, name: str) -> str:
        path = self.path(name)
        text = self._cached(self._summaries, name, path, lambda: _first_doc_line(path))
        # "deploy: one ReplicationController…" is listed next to its name already.
        return text[len(name) + 1:].lstrip() if text.startswith(f"{name}:") else text

    def help(self, name: str) -> str:
        path = self.path(name)
        return self._cached(self._helps, name, path, lambda: _run_help(name, path))

    def _cached(self, cache: dict[str, _Cached], name: str, path: Path,
                make: Callable[[], str]) -> str:
        mtime_ns = path.stat().st_mtime_ns
        with self._lock:
            hit = cache.get(name)
        if hit is not None and hit.mtime_ns == mtime_ns:
            return hit.text
        text = make()
        with self._lock:
            cache[name] = _Cached(mtime_ns, text)
        return text


def _first_doc_line(path: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    return doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""


def _help_environment() -> dict[str, str]:
    """An allow-list, as for jobs: a tool's --help never sees the gateway's secrets
    (OCHO_TOKENS, the broker's and the store's URLs)."""
    return {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8"}


def _run_help(name: str, path: Path) -> str:
    try:
        done = subprocess.run([sys.executable, "-P", str(path), "--help"], capture_output=True,
                              timeout=HELP_TIMEOUT_S, cwd=path.parent, stdin=subprocess.DEVNULL,
                              env=_help_environment())
    except subprocess.TimeoutExpired:
        raise OchoError(f"`{name} --help` did not finish within {HELP_TIMEOUT_S:.0f} s") from None
    text = (done.stdout + done.stderr).decode("utf-8", errors="replace")
    if done.returncode != 0:
        raise OchoError(f"`{name} --help` failed with exit code {done.returncode}: "
                        f"{text.strip()[-500:]}")
    return text


def help_text(catalog: ToolCatalog, names: list[str]) -> tuple[bool, str]:
    """What `help [TOOL]` answers: (ok, text)."""
    if not names:
        tools = catalog.names()
        if not tools:
            return True, f"no tools are installed in {catalog.tools_dir}\n"
        width = max(len(name) for name in tools)
        lines = ["available commands:"]
        lines += [f"  {name:<{width}}  {_summary(catalog, name)}".rstrip() for name in tools]
        lines.append("`help TOOL` shows a tool's options.")
        return True, "\n".join(lines) + "\n"
    if len(names) > 1:
        return False, "usage: help [TOOL]\n"
    try:
        return True, catalog.help(names[0])
    except UnknownTool as exc:
        return False, unknown_command(exc.tool, exc.known)
    except OchoError as exc:
        return False, f"{exc}\n"


def unknown_command(tool: str, known: list[str]) -> str:
    listing = ", ".join(known) if known else "none installed"
    return f"unknown command {tool!r} (available commands -> {listing})\n"


def _summary(catalog: ToolCatalog, name: str) -> str:
    try:
        return catalog.summary(name)
    except OchoError:
        return ""
