"""Server-side Lua scripts: loaded once per server, called by SHA, reloaded after a restart.

Every script lives in ``coordinator/scripts/<name>.lua``, headed by the keys and arguments it
takes. :class:`Scripts` hides ``NOSCRIPT`` (the server restarted or ran SCRIPT FLUSH): the
script is loaded again and the call retried once, transparently.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import redis.exceptions as rex

from coordinator.errors import translate


@cache
def source(name: str) -> bytes:
    """The text of ``scripts/<name>.lua``."""
    return resources.files("coordinator").joinpath("scripts", f"{name}.lua").read_bytes()


@cache
def sha(name: str) -> str:
    """SHA1 of a script, as EVALSHA wants it (computed locally: no round trip)."""
    return hashlib.sha1(source(name)).hexdigest()


def is_noscript(err: BaseException) -> bool:
    return isinstance(err, rex.NoScriptError) or str(err).startswith("NOSCRIPT")


class Scripts:
    """Calls named scripts on one client (``redis.Redis`` or ``RedisCluster``)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def load(self, name: str, target: Any = None) -> None:
        """SCRIPT LOAD one script (on ``target`` if given: a node client or a connection)."""
        (target or self._client).script_load(source(name))

    def call(self, name: str, keys: list[str], args: list[Any], context: str = "") -> Any:
        """EVALSHA ``name``; on NOSCRIPT load it and retry once. Errors are translated."""
        digest = sha(name)
        try:
            try:
                return self._client.evalsha(digest, len(keys), *keys, *args)
            except rex.ResponseError as err:
                if not is_noscript(err):
                    raise
                return self._client.eval(source(name), len(keys), *keys, *args)
        except rex.RedisError as err:
            raise translate(err, context or f"script {name}") from err
