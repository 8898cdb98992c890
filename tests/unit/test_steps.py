"""The steps both shells run (partitions/_base/steps.py): a call's retries and library
loading, and connecting's detection, driven with recorded replies and no server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.exceptions as rex

from partitions._base.durability import Durability
from partitions._base.errors import ConnectionFailedError, LibraryMissingError, ServerTooOldError
from partitions._base.functions import (
    Backoff,
    FCall,
    Load,
    Pipeline,
    Refresh,
    Send,
    call_steps,
    function_name,
)
from partitions._base.steps import Pause, adrive, drive
from partitions._client.connection import OnNode, Primaries, connect_steps, detect_steps

REFUSED = rex.ConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused.")
MISSING = rex.ResponseError("Function not found")


class Script:
    """Answers each action with the next recorded outcome, and remembers the actions."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.actions: list[Any] = []

    def __call__(self, action: Any) -> Any:
        self.actions.append(action)
        if isinstance(action, Pause | Refresh):
            return None
        out = self.outcomes.pop(0)
        if isinstance(out, BaseException):
            raise out
        return out

    def kinds(self) -> list[str]:
        return [type(a).__name__ for a in self.actions]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_its_most_and_stops_at_its_window() -> None:
    clock = Clock()
    backoff = Backoff(1.0, first=0.1, most=0.3, clock=clock)
    pauses = []
    while (pause := backoff.next_pause()) is not None:
        pauses.append(pause)
        clock.now += pause
    assert pauses == [0.1, 0.2, 0.3, 0.3]
    assert sum(pauses) <= 1.0


def test_a_call_that_did_not_run_pauses_and_is_sent_again() -> None:
    script = Script([REFUSED, REFUSED, 7])
    steps = call_steps(FCall("fence", ["k"], ["claim"]), retry_for=5, cluster=False)
    assert drive(steps, script) == 7
    assert script.kinds() == ["Send", "Pause", "Send", "Pause", "Send"]
    assert script.actions[0] == Send(("FCALL", function_name("fence"), 1, "k", "claim"))


def test_the_retry_window_closes_with_the_last_error() -> None:
    clock = Clock()

    def perform(action: Any) -> Any:
        if isinstance(action, Pause):
            clock.now += action.seconds
            return None
        raise REFUSED

    steps = call_steps(FCall("fence", ["k"], []), retry_for=1.0, cluster=False, clock=clock)
    with pytest.raises(ConnectionFailedError, match="Connection refused"):
        drive(steps, perform)
    assert clock.now <= 1.0


def test_no_retry_when_not_asked_or_when_it_may_have_run() -> None:
    script = Script([REFUSED])
    with pytest.raises(ConnectionFailedError):
        drive(call_steps(FCall("fence", ["k"], []), retry_for=0, cluster=False), script)
    script = Script([rex.ConnectionError("Connection closed by server.")])
    with pytest.raises(ConnectionFailedError):
        drive(call_steps(FCall("fence", ["k"], []), retry_for=5, cluster=False), script)
    assert script.kinds() == ["Send"]


def test_a_missing_library_is_loaded_on_the_keys_node_then_the_call_sent_again() -> None:
    script = Script([MISSING, "OK", 1])
    assert drive(call_steps(FCall("fence", ["k"], []), retry_for=0, cluster=True), script) == 1
    assert script.kinds() == ["Send", "Load", "Send"]
    assert script.actions[1] == Load("k")


def test_a_user_who_may_not_load_is_told_what_to_run() -> None:
    script = Script([MISSING, rex.NoPermissionError("NOPERM no FUNCTION LOAD")])
    with pytest.raises(LibraryMissingError, match="partstream functions load"):
        drive(call_steps(FCall("fence", ["k"], []), retry_for=0, cluster=False), script)


def test_a_durable_call_follows_a_redirect_then_checks_the_replicas() -> None:
    moved = rex.ResponseError("MOVED 3999 127.0.0.1:7001")
    script = Script([[moved, 0], [1, 1]])
    steps = call_steps(
        FCall("fence", ["k"], []),
        retry_for=0,
        cluster=True,
        durability=Durability(acks="all"),
        wait_ms=50,
    )
    assert drive(steps, script) == 1
    assert script.kinds() == ["Pipeline", "Refresh", "Pipeline"]
    pipeline = script.actions[0]
    assert isinstance(pipeline, Pipeline) and pipeline.key == "k"
    assert pipeline.commands[1] == ("WAIT", 1, 50)


def test_the_async_driver_runs_the_same_steps() -> None:
    script = Script([REFUSED, MISSING, "OK", 3])

    async def perform(action: Any) -> Any:
        return script(action)

    steps = call_steps(FCall("fence", ["k"], []), retry_for=5, cluster=False)
    assert asyncio.run(adrive(steps, perform)) == 3
    assert script.kinds() == ["Send", "Pause", "Send", "Load", "Send"]


VALKEY_8 = {"server_name": "valkey", "valkey_version": "8.1.0", "redis_version": "7.2.4"}


def test_detection_probes_valkey_and_reads_policy_and_replicas() -> None:
    unknown = rex.ResponseError("unknown command 'XACKDEL'")
    arity = rex.ResponseError("wrong number of arguments for 'waitaof' command")
    script = Script(
        [VALKEY_8, unknown, arity, {"maxmemory-policy": "noeviction"}, {"connected_slaves": 2}]
    )
    info = drive(detect_steps(cluster=False), script)
    assert (info.flavor, info.version, info.replicas) == ("valkey", (8, 1, 0), 2)
    assert info.features == frozenset({"waitaof"})
    assert info.maxmemory_policy == "noeviction"


def test_a_cluster_is_as_old_as_its_oldest_primary() -> None:
    redis_74 = {"redis_version": "7.4.0"}
    redis_70 = {"redis_version": "7.0.15"}
    script = Script(
        [
            ["a", "b"],
            redis_74,
            {"maxmemory-policy": "noeviction"},
            {},
            redis_70,
            rex.NoPermissionError("NOPERM"),
            {},
        ]
    )
    info = drive(detect_steps(cluster=True), script)
    assert isinstance(script.actions[0], Primaries)
    assert {a.node for a in script.actions if isinstance(a, OnNode)} == {"a", "b"}
    assert info.version == (7, 0, 15) and info.cluster
    assert "waitaof" not in info.features  # 7.0 lacks it: only what every primary has
    assert info.maxmemory_policy is None  # one primary would not say


def test_too_old_a_server_is_refused_after_ping() -> None:
    script = Script([True, {"redis_version": "6.2.14"}])
    with pytest.raises(ServerTooOldError, match=r"Redis >= 7\.0"):
        drive(connect_steps(cluster=False, failover_window=0), script)
    assert script.actions[0] == Send(("PING",))
