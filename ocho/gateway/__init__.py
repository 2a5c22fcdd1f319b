"""The gateway: HTTP API, job store, the recorder of worker events, the publisher."""
