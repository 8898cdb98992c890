"""Riding out a failover: the bounded retry of calls that are safe to send again, written
once as steps (partitions/_base/steps.py) for the blocking and the asyncio shells.

While a cluster promotes a replica (or Sentinels replace a primary) a call can meet a dead
node (connection refused or reset, a timeout), a node that no longer serves its slot
(MOVED, ASK, READONLY: a demoted primary), a cluster that is not ready (CLUSTERDOWN,
MASTERDOWN, TRYAGAIN) or a promoted node still loading its data (LOADING). For a few seconds;
then the same call succeeds on the new primary. :func:`ride_steps` runs a call's steps again
after such an error, learning the slot map in between, until a time budget runs out.

A call that broke after it was sent may have run: only calls whose repetition is harmless
come here, and each caller says why its call is. Others use
:func:`partitions._base.functions.call_steps`' own window, which repeats only what provably
did not run. On a single server nothing is retried here (budget 0): there is no failover,
and a restart is the caller's to judge.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import redis.exceptions as rex

from partitions._base.functions import (
    FAILOVER_GRACE_S,
    Backoff,
    Refresh,
    fails_over,
    invoke_steps,
    is_cluster_client,
)
from partitions._base.steps import Pause, Steps, T

# A member's calls ride out a failover for its group's session timeout, within these bounds:
# at least the time a replica takes to be promoted (a node timeout plus an election), at
# most the failover grace of every other call.
MIN_BUDGET_S = 10.0
MAX_BUDGET_S = FAILOVER_GRACE_S

# What a failover or a resharding answers, by class (redis-py strips the code from some of
# these errors' messages) and by the reply's prefix.
_MOVING = (
    rex.AskError,  # MovedError is a subclass
    rex.TryAgainError,
    rex.ClusterDownError,  # MasterDownError is a subclass
    rex.ReadOnlyError,
    rex.BusyLoadingError,
    rex.SlotNotCoveredError,
)
_MOVING_PREFIXES = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY", "MASTERDOWN", "LOADING")


def budget(client: object, session_timeout_ms: int | None = None) -> float:
    """Seconds a call on ``client`` rides out a failover: 0 on a single server; on a cluster
    or behind Sentinels the session timeout (a member's calls) clamped to
    [:data:`MIN_BUDGET_S`, :data:`MAX_BUDGET_S`], else :data:`MAX_BUDGET_S`."""
    if not fails_over(client):
        return 0.0
    if session_timeout_ms is None:
        return MAX_BUDGET_S
    return min(MAX_BUDGET_S, max(MIN_BUDGET_S, session_timeout_ms / 1000))


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and what caused it (partstream's errors are raised ``from`` redis-py's)."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__


def cause_of(err: BaseException) -> BaseException | None:
    """The redis-py error behind ``err`` that makes it transient (see :func:`transient`)."""
    for e in _chain(err):
        if isinstance(e, rex.AuthenticationError):
            return None  # a refused password stays refused
        if isinstance(e, (*_MOVING, rex.ConnectionError, rex.TimeoutError)):
            return e
        if isinstance(e, rex.ResponseError) and str(e).startswith(_MOVING_PREFIXES):
            return e
        if isinstance(e, rex.RedisClusterException) and "cannot be connected" in str(e):
            return e  # no seed reachable while one is down and the others re-learn the map
    return None


def transient(err: BaseException) -> bool:
    """Whether ``err`` (a redis-py error or partstream's translation of one) is what a
    failover or resharding answers for a few seconds: a lost or refused connection, a
    timeout, MOVED / ASK / TRYAGAIN / CLUSTERDOWN / MASTERDOWN / READONLY / LOADING, or no
    reachable cluster node. Never an ACL refusal, a wrong password or a script's error."""
    return cause_of(err) is not None


def ride_steps(
    make: Callable[[], Steps[T]],
    budget_s: float,
    *,
    cluster: bool,
    clock: Callable[[], float] = time.monotonic,
) -> Steps[T]:
    """Run the steps ``make()`` builds; after a :func:`transient` error, re-learn the slot
    map (on a cluster), pause, and run a fresh set, for ``budget_s`` seconds in all. The last
    error is raised once the budget is spent (at once with a budget of 0).

    Only for calls that are safe to repeat: one that broke after it was sent may have run.
    """
    backoff = Backoff(budget_s, clock=clock)
    while True:
        try:
            return (yield from make())
        except Exception as err:
            cause = cause_of(err) if budget_s > 0 else None
            if cause is None:
                raise
            pause = backoff.next_pause()
            if pause is None:
                raise
            if cluster:
                yield Refresh(cause)
            yield Pause(pause)


def repeatable_steps(
    client: object, fn: Callable[[], object], budget_s: float | None = None
) -> Steps[Any]:
    """``fn()``, client calls on ``client`` that are safe to repeat (reads, or writes whose
    repetition changes nothing), riding out a failover for ``budget_s`` (default
    :func:`budget`); run it with the shell's ``functions.run``. Its redis-py error, if it
    fails for good, is the caller's to translate."""
    window = budget(client) if budget_s is None else budget_s
    return ride_steps(lambda: invoke_steps(fn), window, cluster=is_cluster_client(client))
