"""partstream: Kafka-style partitioned streaming on Redis Streams.

The data plane and public API: topics, routing, the producer, replay, the embedded server.
Consumer groups are coordinated by :mod:`coordinator`, re-exported here where users need it.
"""

from __future__ import annotations

from coordinator.errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    ConnectionFailedError,
    DuplicateInstanceError,
    EvictionPolicyError,
    FencedError,
    InvalidNameError,
    MembershipError,
    NotOwnerError,
    OperationTimeoutError,
    PartstreamError,
    PermissionDeniedError,
    RecordTooLargeError,
    SerializationError,
    ServerError,
    ServerOutOfMemoryError,
    ServerTooOldError,
    StateLostError,
    TopicExistsError,
    UnknownGroupError,
    UnknownMemberError,
    UnknownTopicError,
    WrongTypeError,
)
from coordinator.group import GroupAdmin
from coordinator.settings import GroupSettings
from coordinator.types import TopicPartition
from partitions.config import ClientConfig, ProducerConfig
from partitions.connection import Connection, ServerInfo, connect
from partitions.producer import Producer, RecordFuture, RecordMetadata
from partitions.records import Record
from partitions.replay import Position, replay
from partitions.router import Router
from partitions.server import EmbeddedServer
from partitions.topics import TopicAdmin, TopicDescription, TopicMeta, TopicSpec

__all__ = [
    "BufferFullError",
    "ClientConfig",
    "ClosedError",
    "ConfigError",
    "Connection",
    "ConnectionFailedError",
    "DuplicateInstanceError",
    "EmbeddedServer",
    "EvictionPolicyError",
    "FencedError",
    "GroupAdmin",
    "GroupSettings",
    "InvalidNameError",
    "MembershipError",
    "NotOwnerError",
    "OperationTimeoutError",
    "PartstreamError",
    "PermissionDeniedError",
    "Position",
    "Producer",
    "ProducerConfig",
    "Record",
    "RecordFuture",
    "RecordMetadata",
    "RecordTooLargeError",
    "Router",
    "SerializationError",
    "ServerError",
    "ServerInfo",
    "ServerOutOfMemoryError",
    "ServerTooOldError",
    "StateLostError",
    "TopicAdmin",
    "TopicDescription",
    "TopicExistsError",
    "TopicMeta",
    "TopicPartition",
    "TopicSpec",
    "UnknownGroupError",
    "UnknownMemberError",
    "UnknownTopicError",
    "WrongTypeError",
    "connect",
    "replay",
]
