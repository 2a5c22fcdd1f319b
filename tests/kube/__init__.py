"""A Kubernetes API emulator for the tool tests, served over real HTTP."""
