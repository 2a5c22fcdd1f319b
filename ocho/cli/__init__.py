"""`ocho`: run portal tools from a terminal, through the HTTP gateway.

Only the standard library, imported lazily where it costs: the CLI must start
fast, so nothing here imports pika, flask, marshmallow or kubernetes (not even
ocho.message, which pulls in marshmallow).

Modules: errors (exit statuses), client (HTTP), uploads (local files), follow
(live output), options, commands, shell (interactive), usage (help texts).
"""

from __future__ import annotations

import os
import sys

from ocho.cli.client import first_line
from ocho.cli.commands import dispatch
from ocho.cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SIGNAL_BASE,
    EXIT_UNAVAILABLE,
    CliError,
)
from ocho.cli.follow import Terminal, stdin_is_terminal
from ocho.cli.options import Options, parse_leading_options
from ocho.cli.usage import USAGE

# typing costs start-up time; type checkers read this block, the interpreter skips it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

def main(argv: list[str] | None = None) -> int:
    terminal = Terminal()
    try:
        options = Options.from_env()
        words = parse_leading_options(sys.argv[1:] if argv is None else argv, options)
        terminal.verbose = options.verbose
        if options.help:
            sys.stdout.write(USAGE)
            return EXIT_OK
        if options.version:
            from ocho import __version__

            print(f"ocho {__version__}")
            return EXIT_OK
        if not words:
            if stdin_is_terminal():
                from ocho.cli.shell import shell  # readline: only for the shell

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
