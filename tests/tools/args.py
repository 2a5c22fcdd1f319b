"""args [ARG...]: print its arguments and the files of its directory as JSON (a test tool).

One line: {"argv": [...], "files": {name: {"kind": "file"|"symlink"|..., "mode": "0o600"}},
"dir_mode": "0o700"}.
"""
import json
import os
import stat
import sys


def kind(mode):
    for name, test in (("file", stat.S_ISREG), ("dir", stat.S_ISDIR), ("symlink", stat.S_ISLNK)):
        if test(mode):
            return name
    return "other"


files = {}
for name in os.listdir("."):
    info = os.lstat(name)
    files[name] = {"kind": kind(info.st_mode), "mode": oct(stat.S_IMODE(info.st_mode))}
print(json.dumps({"argv": sys.argv[1:], "files": files,
                  "dir_mode": oct(stat.S_IMODE(os.stat(".").st_mode))}))
