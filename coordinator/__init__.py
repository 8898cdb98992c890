"""partstream's control plane: consumer-group membership, assignment, epochs and fencing."""

from __future__ import annotations

from coordinator.assignors import ASSIGNORS, assign
from coordinator.fence import claim_fence, fence_value, read_fence, release_fence
from coordinator.group import GroupAdmin
from coordinator.heartbeat import Heartbeat
from coordinator.member import Member
from coordinator.records import (
    Grant,
    GroupDescription,
    HeartbeatResult,
    MemberDescription,
    PartitionOwner,
)
from coordinator.runner import MemberRunner, RebalanceListener
from coordinator.settings import GroupSettings
from coordinator.types import MemberSubscription, TopicPartition

__all__ = [
    "ASSIGNORS",
    "Grant",
    "GroupAdmin",
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
