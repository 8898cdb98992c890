"""Stop signals relayed off the main thread.

Python runs a signal handler on the main thread between two bytecodes, wherever that thread
is, including inside ``Event.wait()`` just after it took back the event's lock. A handler
that calls ``stop.set()`` on that very event then waits forever for a lock its own thread
holds (the lock is not reentrant): the process never stops. The same goes for a condition,
a logging handler's lock or anything else the main thread may hold. So the handler here
only writes the signal's number to a pipe (no lock, async-signal-safe) and a daemon thread
reads it and runs the callback, where taking locks is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalRelay:
    """Runs ``callback(signum)`` on a relay thread for each of ``signals`` received.

    ``install()`` does nothing off the main thread (Python allows handlers only there) and
    returns whether it installed them; ``restore()`` puts the previous handlers back and
    stops the relay thread. Also a context manager."""

    def __init__(
        self, callback: Callable[[int], None], signals: Iterable[int] = STOP_SIGNALS
    ) -> None:
        self.callback = callback
        self.signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self._write: int | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def setting(cls, event: threading.Event, signals: Iterable[int] = STOP_SIGNALS) -> SignalRelay:
        """A relay whose signals set ``event``."""
        return cls(lambda _signum: event.set(), signals)

    def install(self) -> bool:
        if self._write is not None:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._write = write
        self._thread = threading.Thread(
            target=self._relay, args=(read,), name="partstream-signals", daemon=True
        )
        self._thread.start()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return True

    def restore(self) -> None:
        if self._write is None:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        os.close(self._write)  # the relay thread reads end-of-file and stops
        self._write = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> SignalRelay:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        write = self._write
        if write is None:
            return
        # A full pipe already holds wake-ups; a closed one was restored meanwhile.
        with contextlib.suppress(OSError):
            os.write(write, bytes((signum,)))

    def _relay(self, read: int) -> None:
        try:
            while data := os.read(read, 64):
                for signum in data:
                    try:
                        self.callback(signum)
                    except Exception:
                        log.exception("signal %d: the stop callback failed", signum)
        finally:
            os.close(read)


__all__ = ["STOP_SIGNALS", "SignalRelay"]
