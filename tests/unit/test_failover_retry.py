"""What is retried while a server fails over, and what is not: only errors proving the call
did not run (no connection could be opened, CLUSTERDOWN, TRYAGAIN, LOADING), and only on a
client whose primaries can be replaced (cluster, Sentinels). No server: fake clients."""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as rex

from partitions._base.errors import ConnectionFailedError
from partitions._base.functions import Functions, did_not_run, fails_over


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (rex.ConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused."), True),
        (rex.ConnectionError("No master found for 'partstream'"), True),
        (rex.ClusterDownError("The cluster is down"), True),
        (rex.TryAgainError("Multiple keys request during rehashing of slot"), True),
        (rex.BusyLoadingError("Valkey is loading the dataset in memory"), True),
        (rex.ConnectionError("Connection closed by server."), False),  # may have run
        (rex.TimeoutError("Timeout reading from socket"), False),  # may have run
        (rex.ResponseError("WRONGTYPE Operation against a key"), False),
    ],
)
def test_did_not_run(err: Exception, expected: bool) -> None:
    assert did_not_run(err) is expected


class _Pool:
    def __init__(self, sentinel: bool) -> None:
        self.sentinel_manager = object() if sentinel else None


class _Client:
    """Answers FCALL with the queued outcomes in order."""

    def __init__(self, outcomes: list[Any], sentinel: bool = True) -> None:
        self.outcomes = outcomes
        self.calls = 0
        self.connection_pool = _Pool(sentinel)

    def execute_command(self, *args: Any) -> Any:
        self.calls += 1
        out = self.outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out


REFUSED = rex.ConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused.")


def test_a_call_behind_sentinels_waits_for_the_new_primary() -> None:
    client = _Client([REFUSED, rex.ConnectionError("No master found for 'x'"), ["OK"]])
    assert fails_over(client)
    assert Functions(client).call("member", ["k"], ["heartbeat"]) == ["OK"]
    assert client.calls == 3


def test_a_call_that_may_have_run_is_not_repeated() -> None:
    client = _Client([rex.ConnectionError("Connection closed by server."), ["OK"]])
    with pytest.raises(ConnectionFailedError):
        Functions(client).call("topic_create", ["k"], [])
    assert client.calls == 1


def test_a_single_server_or_a_zero_grace_fails_at_once() -> None:
    single = _Client([REFUSED, ["OK"]], sentinel=False)
    assert not fails_over(single)
    with pytest.raises(ConnectionFailedError):
        Functions(single).call("member", ["k"], [])
    assert single.calls == 1
    heartbeat = _Client([REFUSED, ["OK"]])
    with pytest.raises(ConnectionFailedError):
        Functions(heartbeat, retry_for=0).call("member", ["k"], [])
    assert heartbeat.calls == 1


def test_the_grace_is_bounded() -> None:
    client = _Client([REFUSED] * 100)
    with pytest.raises(ConnectionFailedError):
        Functions(client, retry_for=0.3).call("member", ["k"], [])
    assert 2 <= client.calls < 20
