"""The core: the App (one composition root), tasks, job handles, serialization, events,
middleware and the handler context. Written once for every backend."""
