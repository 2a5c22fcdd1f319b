"""The reaper process (ocho.worker.reaper tells why): `python -I -S reaper_process.py FD`.

Invariants: it imports the standard library only (it runs without site-packages),
reads "+PGID" / "-PGID" lines from FD, ignores SIGINT and SIGTERM, and when FD
reaches end-of-file (the worker is gone, or closed it) SIGKILLs every process
group it still knows about, then exits.
"""

from __future__ import annotations

import os
import signal
import sys


def main(read_end: int) -> None:
    # Signals meant for the worker (say a kill of its whole process group) must not
    # stop the reaper before it has done its job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: set[int] = set()
    buffer = b""
    while True:
        try:
            data = os.read(read_end, 4096)
        except InterruptedError:
            continue
        if not data:
            break
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"+"):
                groups.add(int(line[1:]))
            elif line.startswith(b"-"):
                groups.discard(int(line[1:]))
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    main(int(sys.argv[1]))
