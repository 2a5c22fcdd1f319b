"""ocho's own options (before the tool or command), and where they come from.

Invariant: options are read from the environment first (OCHO_URL, OCHO_TOKEN)
and then from the leading words; the words after the tool are never touched.
"""

from __future__ import annotations

import os

from ocho.cli.client import Gateway
from ocho.cli.errors import refused

DEFAULT_URL = "http://127.0.0.1:9000"


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
        self.version = False

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
                "-v": "verbose", "--verbose": "verbose", "-h": "help", "--help": "help",
                "-V": "version", "--version": "version"}


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
