"""What every tool script shares: its argument parser and how it ends.

A tool ends with exit code 0 on success and non-zero with ONE line saying why
on failure, never a traceback: on stderr for people, or as `{"ok": false,
"error": ...}` on stdout with -j for machines. With -d/--debug (as the original
tools took it) stderr also gets debug log lines (the Kubernetes calls made) and
an internal error's traceback; stdout is the same either way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from ocho.errors import OchoError
from ocho.kube.errors import one_line
from ocho.kube.output import emit_json

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70


class ToolArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def make_parser(prog: str, description: str, epilog: str = "") -> ToolArgumentParser:
    parser = ToolArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-j", "--json", action="store_true",
                        help="print one JSON document (for machines) instead of text")
    parser.add_argument("-d", "--debug", action="store_true",
                        help="more detail on stderr: debug log lines, an internal error's "
                             "traceback")
    parser.add_argument("--k8s-namespace", metavar="NS",
                        help="Kubernetes namespace to work in (default: $OCHO_K8S_NAMESPACE, "
                             "else the kubeconfig context's, else 'default')")
    return parser


def main(argv: list[str] | None, parser: argparse.ArgumentParser,
         body: Callable[[argparse.Namespace], int]) -> int:
    """A tool's whole life: parse its arguments, run its body, end as `run` says."""
    args = parser.parse_args(argv)
    if getattr(args, "debug", False):
        _debug_to_stderr()
    return run(lambda: body(args), prog=parser.prog, json_output=args.json)


def _debug_to_stderr() -> None:
    import logging

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(body: Callable[[], int], *, prog: str, json_output: bool) -> int:
    """Run a tool's body and turn every failure into an exit code and one line."""
    try:
        return body()
    except OchoError as exc:
        return fail(str(exc), prog=prog, json_output=json_output)
    except KeyboardInterrupt:
        return fail("interrupted", prog=prog, json_output=json_output, code=130)
    except BrokenPipeError:
        return EXIT_FAILED  # whoever read our output went away; nothing to tell them
    except Exception as exc:  # noqa: BLE001 - a person gets one line, not a traceback
        if logging_debug():
            import traceback

            traceback.print_exc(file=sys.stderr)
        return fail(f"internal error ({type(exc).__name__}): {exc}", prog=prog,
                    json_output=json_output, code=EXIT_INTERNAL)


def logging_debug() -> bool:
    """-d/--debug was given (it set the root logger to DEBUG)."""
    import logging

    return logging.getLogger().isEnabledFor(logging.DEBUG)


def fail(message: str, *, prog: str, json_output: bool, code: int = EXIT_FAILED) -> int:
    if json_output:
        emit_json({"ok": False, "error": one_line(message)})
    else:
        print(f"{prog}: {one_line(message)}", file=sys.stderr)
    return code


def add_cluster_patterns(parser: argparse.ArgumentParser, *, required: bool) -> None:
    from ocho.kube.patterns import PATTERN_HELP

    parser.add_argument("clusters", nargs="+" if required else "*", metavar="CLUSTER",
                        help=PATTERN_HELP + ("" if required else " (default: every cluster)"))
