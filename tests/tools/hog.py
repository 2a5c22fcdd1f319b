"""hog memory|fork|cpu: misbehave without bound until a limit stops it (a test tool)."""
import os
import sys
import time

kind = sys.argv[1]
print(f"pid={os.getpid()} pgid={os.getpgid(0)}", flush=True)
if kind == "memory":
    hoard = []
    while True:
        hoard.append(bytearray(64 * 1024 * 1024))
elif kind == "fork":
    children = 0
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
elif kind == "cpu":
    while True:
        pass
