"""Data-plane fencing: which member may read and ack a partition for a group.

Per partition, a hash under the *partition's* hash tag (``Keys.fence(layout, p)``) maps each
group to ``"<member_id> <token>"`` (one space; the token is the decimal grant token the
coordinator issued with the partition). The consumer's read and ack scripts compare
``HGET fence <group>`` with exactly :func:`fence_value` atomically with XREADGROUP/XACK, so a
member whose grant was superseded can neither receive new entries nor ack.

The group's keys live in another cluster slot, so the coordinator cannot write the fence in
its own script: the new owner calls :func:`claim_fence` after the grant, before its first
read, and :func:`release_fence` when it hands the partition back. Tokens come from one
strictly increasing counter per group, so the latest grant always wins the compare-and-set.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions as rex

from partitions._base.durability import Durability
from partitions._base.errors import translate
from partitions._base.functions import FCall, Functions
from partitions._base.keys import Keys, TopicLayout
from partitions._base.replies import fence_from_reply


def fence_value(member_id: str, token: int) -> str:
    """The exact string a fence field holds for this grant."""
    return f"{member_id} {int(token)}"


def fence_request(
    op: str,
    keys: Keys,
    group: str,
    layout: TopicLayout,
    partition: int,
    member_id: str,
    token: int,
) -> FCall:
    """fence.lua ``claim`` or ``release`` of one partition's fence for this grant."""
    doing = "claiming" if op == "claim" else "releasing"
    topic = layout.topic
    return FCall(
        "fence",
        [keys.fence(layout, partition)],
        [op, group, member_id, str(int(token))],
        f"{doing} {topic}/{partition} for group {group}",
    )


def fence_held(reply: Any) -> bool:
    """A claim or release reply: True if it took (or freed) the fence, False if a newer
    grant holds it."""
    return bool(int(reply))


def claim_fence(
    client: Any,
    keys: Keys,
    group: str,
    layout: TopicLayout,
    partition: int,
    member_id: str,
    token: int,
    *,
    durability: Durability | None = None,
    retry_for: float | None = None,
) -> bool:
    """Take the fence for this grant; False if a newer grant (higher token) already holds it.

    Idempotent: claiming again with the same member and token returns True. With the
    group's ``durability`` it returns once the claim is on enough replicas. ``retry_for``:
    seconds it is tried while the partition's node fails over (default: Functions').
    """
    call = fence_request("claim", keys, group, layout, partition, member_id, token)
    functions = Functions(client, retry_for=retry_for)
    return fence_held(functions.call(*call.parts(), durability=durability))


def release_fence(
    client: Any,
    keys: Keys,
    group: str,
    layout: TopicLayout,
    partition: int,
    member_id: str,
    token: int,
    *,
    durability: Durability | None = None,
) -> bool:
    """Clear the fence only if it still holds this grant; False if someone newer holds it."""
    call = fence_request("release", keys, group, layout, partition, member_id, token)
    return fence_held(Functions(client).call(*call.parts(), durability=durability))


def read_fence(
    client: Any, keys: Keys, group: str, layout: TopicLayout, partition: int
) -> tuple[str, int] | None:
    """(member_id, token) holding the fence, or None if nobody does."""
    try:
        raw = client.hget(keys.fence(layout, partition), group)
    except rex.RedisError as err:
        raise translate(err, f"reading the fence of {layout.topic}/{partition}") from err
    return fence_from_reply(raw)
