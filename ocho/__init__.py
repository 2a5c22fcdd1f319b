"""Ocho portal: run tools on request through RabbitMQ.

Kept import-free on purpose: tools import from this package once per job, and
every millisecond of interpreter start-up is paid by every job.
"""

__version__ = "0.1.0"
