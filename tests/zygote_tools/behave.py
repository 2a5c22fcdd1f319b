"""behave KIND: end in one of the ways a script can end (a test tool)."""
import atexit
import os
import signal
import sys
import threading
import time

kind = sys.argv[1]
print("start", flush=True)
if kind == "raise":
    def inner():
        raise ValueError("boom")
    inner()
elif kind == "exit-message":
    sys.exit("a message for stderr")
elif kind == "exit-code":
    sys.exit(300)
elif kind == "exit-none":
    sys.exit()
elif kind == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
elif kind == "keyboard":
    raise KeyboardInterrupt
elif kind == "thread":
    threading.Thread(target=lambda: (time.sleep(0.2), print("thread done", flush=True))).start()
elif kind == "atexit":
    atexit.register(print, "atexit ran")
    sys.stdout.write("no newline, buffered")
elif kind == "syntax":
    exec(compile("def (:\n", "<inline>", "exec"))
elif kind == "order":
    for i in range(200):
        print(f"line {i}")
elif kind == "unicode":
    print("héllo ✓")
    sys.stdout.buffer.write(b"\xff raw\n")
elif kind == "os-exit":
    print("bye", end="", flush=True)
    os._exit(7)
