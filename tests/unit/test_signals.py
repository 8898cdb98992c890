"""Stop signals are relayed off the main thread (partitions/_base/signals.py).

CI once hung a member process for good: SIGTERM's handler called ``stop.set()`` while the
main thread was inside ``stop.wait()`` holding the event's lock. The child processes below
make that moment certain: the main thread holds the event's lock when the signal lands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from partitions._base.signals import SignalRelay

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading
    from partitions._base.signals import SignalRelay

    stop = threading.Event()
    if sys.argv[1] == "relay":
        SignalRelay.setting(stop, (signal.SIGTERM,)).install()
    else:  # what the CLI and the test workers did before
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with stop._cond:  # where Event.wait() is when it returns (a CPython detail)
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))  # bytecodes: the handler runs here, with the lock held
    sys.exit(0 if stop.wait(5) else 3)
    """
)


def run_child(mode: str, timeout: float) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode], env=env)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return -1


def test_a_signal_landing_while_the_main_thread_holds_the_events_lock_still_stops() -> None:
    assert run_child("relay", timeout=30) == 0


def test_the_plain_handler_this_replaces_hangs_there() -> None:
    # Shows the child above can fail: the old handler never returns (it exits in well under
    # a second when it does not hang).
    assert run_child("direct", timeout=6) == -1


def test_each_signal_reaches_the_callback_and_restore_puts_the_old_handler_back() -> None:
    relay_log: list[int] = []
    before = signal.getsignal(signal.SIGUSR1)
    seen = threading.Semaphore(0)

    def callback(signum: int) -> None:
        assert threading.current_thread() is not threading.main_thread()
        relay_log.append(signum)
        seen.release()

    relay = SignalRelay(callback, (signal.SIGUSR1,))
    with relay:
        thread = relay._thread
        for _ in range(2):  # a second signal is delivered too: the runner halts on it
            os.kill(os.getpid(), signal.SIGUSR1)
            assert seen.acquire(timeout=5)
    assert relay_log == [signal.SIGUSR1, signal.SIGUSR1]
    assert signal.getsignal(signal.SIGUSR1) == before
    assert thread is not None and not thread.is_alive()


def test_a_failing_callback_is_logged_and_later_signals_still_arrive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = threading.Semaphore(0)
    calls = []

    def callback(signum: int) -> None:
        calls.append(signum)
        seen.release()
        if len(calls) == 1:
            raise RuntimeError("boom")

    with SignalRelay(callback, (signal.SIGUSR2,)):
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen.acquire(timeout=5)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen.acquire(timeout=5)
    assert len(calls) == 2
    assert "the stop callback failed" in caplog.text


def test_off_the_main_thread_install_does_nothing() -> None:
    out = []
    relay = SignalRelay(lambda _s: None, (signal.SIGUSR1,))
    t = threading.Thread(target=lambda: out.append(relay.install()))
    t.start()
    t.join(5)
    assert out == [False]
    relay.restore()  # a no-op


def relay_installed(restore: Callable[[], None] | None) -> bool:
    """Whether SIGTERM and SIGINT both go to a SignalRelay (then restored)."""
    assert restore is not None
    try:
        handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
        return all(isinstance(getattr(h, "__self__", None), SignalRelay) for h in handlers)
    finally:
        restore()


def test_the_runner_and_transform_install_the_relay() -> None:
    from partitions._pipeline.transform import _install_signals
    from partitions._runner.runner import Runner

    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
    stop = threading.Event()
    assert relay_installed(_install_signals(stop))
    runner = Runner.__new__(Runner)
    runner.stop, runner._halt, runner._cond = stop, threading.Event(), threading.Condition()
    assert relay_installed(runner._install_signals())
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == before
