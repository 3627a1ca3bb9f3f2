"""The web dashboard: server-rendered pages under /ui/ over the same services as the API
(docs/dashboard.md). ``session`` is imported by the API's middleware, so this package's
``__init__`` imports nothing."""
