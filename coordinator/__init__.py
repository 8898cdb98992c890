"""partstream's control plane: consumer-group membership, assignment, epochs and fencing.

It stands on the base layer (``partitions._base``: errors, keys, the Functions library, fences)
and never on the data plane. Internal to partstream: the public API is ``partitions``.
"""

from __future__ import annotations

# The base layer is a subpackage of ``partitions``, whose __init__ imports the consumer, which
# imports this package's member module: initialise ``partitions`` first so that whichever of
# the two a program imports first, each module is complete before it is used.
import partitions  # noqa: F401
from coordinator.assignors import ASSIGNORS, assign
from coordinator.heartbeat import Heartbeat
from coordinator.member import Member
from coordinator.runner import MemberRunner, RebalanceListener
from partitions._base.fence import claim_fence, fence_value, read_fence, release_fence
from partitions._base.settings import GroupSettings
from partitions._base.types import (
    Grant,
    GroupDescription,
    HeartbeatResult,
    MemberDescription,
    MemberSubscription,
    PartitionOwner,
    TopicPartition,
)

__all__ = [
    "ASSIGNORS",
    "Grant",
    "GroupDescription",
    "GroupSettings",
    "Heartbeat",
    "HeartbeatResult",
    "Member",
    "MemberDescription",
    "MemberRunner",
    "MemberSubscription",
    "PartitionOwner",
    "RebalanceListener",
    "TopicPartition",
    "assign",
    "claim_fence",
    "fence_value",
    "read_fence",
    "release_fence",
]
