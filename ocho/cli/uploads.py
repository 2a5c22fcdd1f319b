"""Local files named in a command line, uploaded with the job under their base names.

Invariant: an argument is rewritten only when it names an existing local file
(or a pattern matching some); the job sees each upload by its base name.
"""

from __future__ import annotations

import os

from ocho.cli.errors import refused


def is_uploadable_name(name: str) -> bool:
    """The portal's rule for file names (ocho.message.is_safe_file_name), repeated here so
    that the CLI need not import marshmallow."""
    return (0 < len(name) <= 255 and not name.startswith(".")
            and not any(c in name for c in "/\\\0") and name.isprintable())


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
