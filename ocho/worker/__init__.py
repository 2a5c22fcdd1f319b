"""The worker side: consume job requests, run tools, report events."""
