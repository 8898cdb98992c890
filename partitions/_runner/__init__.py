"""Running a handler as a worker: key-ordered concurrency, retries, clean shutdown, health.
Internal: import ``partitions.run`` and ``partitions.RetryPolicy``."""
