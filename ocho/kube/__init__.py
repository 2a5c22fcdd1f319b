"""What the Kubernetes tools share: definitions, manifests, cluster access.

Kept import-free on purpose: every tool imports from here once per job, and a
tool that only prints its --help or renders a dry run must not pay for the
`kubernetes` client (about 250 ms). Import the sub-module you need.
"""
