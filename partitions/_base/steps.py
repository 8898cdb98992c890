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
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

import redis.exceptions as rex

T = TypeVar("T")
Steps = Generator[Any, Any, T]
Errors = tuple[type[BaseException], ...]
# What a shell catches from an action and throws back into the steps (by default).
IO_ERRORS: Errors = (rex.RedisError, rex.RedisClusterException)


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

    def settle(
        self,
        perform: Callable[[Any], Any],
        errors: Errors = IO_ERRORS,
        guard: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        """Do the action with a blocking ``perform`` and feed its result or error back (the
        steps run under ``guard()``, the action outside it)."""
        try:
            result = perform(self.action)
        except errors as err:
            with guard():
                self.fail(err)
        else:
            with guard():
                self.reply(result)

    def _advance(self, step: Callable[[], Any]) -> None:
        try:
            self.action = step()
        except StopIteration as stop:
            self.done, self._value = True, stop.value

    def result(self) -> T:
        return cast(T, self._value)


def drive(
    steps: Steps[T],
    perform: Callable[[Any], Any],
    *,
    errors: Errors = IO_ERRORS,
    guard: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> T:
    """Run ``steps``, doing each action with a blocking ``perform``; the ``errors`` it
    raises are thrown into the steps. ``guard()`` (a lock, say) is held while the steps
    run, never while an action is done."""
    with guard():
        stepper = Stepper(steps)
    while not stepper.done:
        stepper.settle(perform, errors, guard)
    return stepper.result()


async def adrive(
    steps: Steps[T], perform: Callable[[Any], Awaitable[Any]], *, errors: Errors = IO_ERRORS
) -> T:
    """Run ``steps``, doing each action with an awaitable ``perform`` (see :func:`drive`;
    no guard: the steps and the actions share one event loop)."""
    stepper = Stepper(steps)
    while not stepper.done:
        try:  # Stepper.settle, awaited
            result = await perform(stepper.action)
        except errors as err:
            stepper.fail(err)
            continue
        stepper.reply(result)
    return stepper.result()


def dispatch(handlers: dict[type, Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """``perform(action)``: the handler registered for the action's type."""

    def perform(action: Any) -> Any:
        return handlers[type(action)](action)

    return perform
