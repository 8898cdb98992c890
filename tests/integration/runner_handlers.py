"""Handlers for the runner's process tests (``partstream run tests...runner_handlers:slow``).

Each appends one JSON line per finished record to the file named by RUNNER_LOG (flushed
before it returns, so a kill -9 loses no line of a record whose handler returned) with the
process id, the record's key and value, and the handling's start and end times."""

from __future__ import annotations

import json
import os
import threading
import time

from partitions import Record

_lock = threading.Lock()
_DELAY_S = float(os.environ.get("RUNNER_DELAY_S", "0.005"))


def _log(record: Record, started: float) -> None:
    line = json.dumps(
        {
            "pid": os.getpid(),
            "key": (record.key or b"").decode(),
            "value": (record.value or b"").decode(),
            "partition": record.partition,
            "id": record.id,
            "start": started,
            "end": time.monotonic(),
        }
    )
    with _lock, open(os.environ["RUNNER_LOG"], "a") as f:
        f.write(line + "\n")
        f.flush()


def slow(record: Record) -> None:
    started = time.monotonic()
    time.sleep(_DELAY_S)
    _log(record, started)


async def slow_async(record: Record) -> None:
    import asyncio

    started = time.monotonic()
    await asyncio.sleep(_DELAY_S)
    _log(record, started)
