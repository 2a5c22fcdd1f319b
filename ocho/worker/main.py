"""`ocho-worker`: run tools for jobs from RabbitMQ."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ocho import __version__, logs
from ocho.errors import SettingsError
from ocho.settings import Settings
from ocho.worker.consumer import Worker
from ocho.worker.metrics import WorkerMetrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ocho-worker", description=__doc__)
    parser.add_argument("--concurrency", "-c", type=int, help="job slots (OCHO_CONCURRENCY)")
    parser.add_argument("--amqp-url", help="RabbitMQ URL (OCHO_AMQP_URL)")
    parser.add_argument("--tools-dir", type=Path, help="where the tools are (OCHO_TOOLS_DIR)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    options = parser.parse_args(argv)
    try:
        settings = Settings.from_env(concurrency=options.concurrency, amqp_url=options.amqp_url,
                                     tools_dir=options.tools_dir)
    except SettingsError as exc:
        print(f"ocho-worker: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings)
    metrics = WorkerMetrics(settings)
    if settings.metrics_bind:
        try:
            metrics.listen(settings.metrics_bind)
        except SettingsError as exc:
            print(f"ocho-worker: {exc}", file=sys.stderr)
            return 2
    worker = Worker(settings, metrics)
    metrics.serve()  # a thread: only once Worker forked its helpers
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.run()
    metrics.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
