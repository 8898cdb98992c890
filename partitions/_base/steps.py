"""Steps: logic written once for the blocking and the asyncio shells (sans-I/O).

A piece of logic that talks to the server (connecting and detecting it, calling a function
with its retries) is a generator: it yields an *action* (a command to send, a pause, a
slot map to re-learn...) and is sent the action's result back, or has the action's redis
error thrown into it, so it decides what follows exactly as straight-line code would. It
never touches a socket or a clock itself.

A shell runs it: :func:`drive` with a blocking ``perform(action)``, :func:`adrive` with an
awaitable one. The shells choose how each action is done (``time.sleep`` or
``asyncio.sleep``, redis-py or redis.asyncio); the steps choose what is done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import redis.exceptions as rex

T = TypeVar("T")
Steps = Generator[Any, Any, T]
# What a shell catches from an action and throws back into the steps.
IO_ERRORS = (rex.RedisError, rex.RedisClusterException)


@dataclass(frozen=True, slots=True)
class Pause:
    """Sleep this long (the shell's own sleep); the result is None."""

    seconds: float


class Stepper(Generic[T]):
    """Feeds results into steps: ``action`` is what to do next, until ``done``."""

    def __init__(self, steps: Steps[T]) -> None:
        self._steps = steps
        self.done = False
        self._value: T | None = None
        self.action: Any = None
        self._advance(lambda: next(steps))

    def reply(self, result: Any) -> None:
        """The action's result."""
        self._advance(lambda: self._steps.send(result))

    def fail(self, error: BaseException) -> None:
        """The action failed with ``error`` (the steps may catch it)."""
        self._advance(lambda: self._steps.throw(error))

    def settle(self, perform: Callable[[Any], Any]) -> None:
        """Do the action with a blocking ``perform`` and feed its result or error back."""
        try:
            result = perform(self.action)
        except IO_ERRORS as err:
            self.fail(err)
        else:
            self.reply(result)

    def _advance(self, step: Callable[[], Any]) -> None:
        try:
            self.action = step()
        except StopIteration as stop:
            self.done, self._value = True, stop.value

    def result(self) -> T:
        return cast(T, self._value)


def drive(steps: Steps[T], perform: Callable[[Any], Any]) -> T:
    """Run ``steps``, doing each action with a blocking ``perform``."""
    stepper = Stepper(steps)
    while not stepper.done:
        stepper.settle(perform)
    return stepper.result()


async def adrive(steps: Steps[T], perform: Callable[[Any], Awaitable[Any]]) -> T:
    """Run ``steps``, doing each action with an awaitable ``perform``."""
    stepper = Stepper(steps)
    while not stepper.done:
        try:  # Stepper.settle, awaited
            result = await perform(stepper.action)
        except IO_ERRORS as err:
            stepper.fail(err)
            continue
        stepper.reply(result)
    return stepper.result()


def dispatch(handlers: dict[type, Callable[[Any], T]]) -> Callable[[Any], T]:
    """``perform(action)``: the handler registered for the action's type."""

    def perform(action: Any) -> T:
        return handlers[type(action)](action)

    return perform
