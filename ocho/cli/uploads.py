"""Local files named in a command line, uploaded with the job under their base names.

Invariant: an argument is rewritten only when it names an existing local file
(or a pattern matching some); the job sees each upload by its base name. A word
that looks like a file (a definition's suffix, or a path under an existing
directory) but is not one is refused before anything is sent, never passed on
silently as text (--no-upload sends every word as text).
"""

from __future__ import annotations

import os

from ocho.cli.errors import refused

# Words ending so are meant as files: a definition, overrides, a data file.
FILE_SUFFIXES = (".yml", ".yaml", ".json")
# Where the repository keeps its example definitions: worth a hint.
HINT_DIRS = ("definitions",)


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
    if looks_like_a_file(value):
        raise refused(missing_file_message(value))
    return value


def looks_like_a_file(value: str) -> bool:
    """A word meant as a local file that is not there (existing paths are not)."""
    if not value or has_glob(value) or value.startswith("-") or os.path.exists(value):
        return False
    if value.lower().endswith(FILE_SUFFIXES):
        return True
    parent = os.path.dirname(value)
    return bool(parent) and os.path.isdir(parent)


def missing_file_message(value: str) -> str:
    hints = [os.path.join(d, value) for d in HINT_DIRS if os.path.isfile(os.path.join(d, value))]
    hint = f" (did you mean {hints[0]}?)" if hints else ""
    return (f"{value}: no such local file{hint}; nothing was sent. To pass the word to the "
            "tool as text, use --no-upload")
