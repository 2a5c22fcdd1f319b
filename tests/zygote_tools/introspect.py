"""introspect: print, as JSON, what a script can see of its interpreter (a test tool)."""
import json
import os
import resource
import signal
import sys
import tempfile
from pathlib import Path

import yaml  # an uploaded yaml.py in the job's directory must not be this one

handlers = {}
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD, signal.SIGXFSZ,
            signal.SIGHUP, signal.SIGUSR1):
    handler = signal.getsignal(sig)
    handlers[sig.name] = getattr(handler, "__name__", str(handler))
streams = {name: [s.encoding, s.errors, s.line_buffering, s.write_through, s.mode,
                  getattr(s.buffer, "name", None) if hasattr(s, "buffer") else None]
           for name, s in (("stdin", sys.stdin), ("stdout", sys.stdout), ("stderr", sys.stderr))}
print(json.dumps({
    "argv": sys.argv,
    "orig_argv": sys.orig_argv[1:],
    "name": __name__,
    "file": __file__ == os.path.join(os.getcwd(), sys.argv[0]),
    "main_keys": sorted(k for k in globals() if k.startswith("__")),
    "package": __package__,
    "spec": repr(__spec__),
    "loader": type(__loader__).__name__,
    "cwd_on_path": any(p in ("", ".", os.getcwd()) for p in sys.path),
    "yaml_from_job_dir": os.path.dirname(os.path.abspath(yaml.__file__)) == os.getcwd(),
    "flags": [sys.flags.no_site, sys.flags.safe_path, sys.flags.optimize, sys.flags.isolated],
    "streams": streams,
    "stdin": sys.stdin.read(),
    "handlers": handlers,
    "blocked": sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    "ppid": os.getppid(),
    "leader": os.getpgid(0) == os.getpid() == os.getsid(0),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd"))[:4],
    "tempdir": tempfile.gettempdir() == os.getcwd(),
    "home": os.path.expanduser("~") == os.getcwd(),
    "limits": {name: resource.getrlimit(getattr(resource, name))
               for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE",
                            "RLIMIT_CORE")},
    "cgroup": [line for line in Path("/proc/self/cgroup").read_text().splitlines()
               if ":pids:" in line],
    "times_cpu_ms": int(sum(os.times()[:2]) * 1000) < 2000,
}, sort_keys=True))
