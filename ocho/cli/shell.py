"""The interactive shell: each line is what would follow `ocho`.

Invariant: a line that fails never ends the shell; history is kept in
~/.ocho_history.
"""

from __future__ import annotations

import os
import sys

from ocho.cli.commands import SUBCOMMANDS, dispatch
from ocho.cli.errors import EXIT_INTERRUPTED, EXIT_OK, CliError
from ocho.cli.follow import Terminal
from ocho.cli.options import Options, parse_leading_options
from ocho.cli.usage import SHELL_HELP

# typing costs start-up time; type checkers read this block, the interpreter skips it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

HISTORY_FILE = "~/.ocho_history"
# Lines the shell handles itself, never sent to the portal.
LOCAL_COMMANDS = ("exit", "quit", "clear")
HISTORY_LENGTH = 2000


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
            if words == ["clear"]:
                clear_screen()
                continue
            status = run_shell_line(options, words, terminal)
    finally:
        try:
            readline.write_history_file(history)
        except OSError:
            pass
    return status


def clear_screen() -> None:
    """`clear` stays local, as in any shell: the portal has no business with it."""
    sys.stdout.write("\x1b[H\x1b[2J")
    sys.stdout.flush()


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
        return sorted(w for w in {*SUBCOMMANDS, *LOCAL_COMMANDS, *tool_names} if w.startswith(text))

    def complete(text: str, index: int) -> str | None:
        found = candidates(text)
        return found[index] if index < len(found) else None

    return complete
