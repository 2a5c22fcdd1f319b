"""sleep SECONDS [CHILDREN]: print a line, start CHILDREN `sleep` processes, wait
(a test tool). Prints `pid=<pid> pgid=<pgid> children=<pids>` first."""
import os
import subprocess
import sys
import time

seconds = float(sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 0
children = [subprocess.Popen(["sleep", "600"]).pid for _ in range(count)]
print(f"pid={os.getpid()} pgid={os.getpgid(0)} children={','.join(map(str, children))}", flush=True)
end = time.monotonic() + seconds
tick = 0
while time.monotonic() < end:
    time.sleep(min(0.5, max(end - time.monotonic(), 0)))
    tick += 1
    print(f"tick {tick}", flush=True)
print("done")
