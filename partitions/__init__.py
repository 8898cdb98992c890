"""partstream: Kafka-style partitioned streaming on Redis Streams.

The data plane and public API: topics, routing, the producer, the consumer, replay, offsets
and lag, dead letters, ACL rules, the embedded server.
Consumer groups are coordinated by :mod:`coordinator`, re-exported here where users need it.
"""

from __future__ import annotations

from coordinator.group import GroupAdmin
from coordinator.runner import RebalanceListener
from coordinator.settings import GroupSettings
from partitions._admin.acl import acl_rules
from partitions._admin.deadletter import DeadLetter, DeadLetters
from partitions._admin.offsets import check_lag, execute_group_seek, group_lag, plan_group_seek
from partitions._admin.replay import Position, replay
from partitions._admin.topics import TopicAdmin, TopicDescription, TopicMeta, TopicSpec
from partitions._base.errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    ConnectionFailedError,
    DuplicateInstanceError,
    EvictionPolicyError,
    FencedError,
    InvalidNameError,
    MembershipError,
    NotEnoughReplicasError,
    NotOwnerError,
    OperationTimeoutError,
    PartstreamError,
    PermissionDeniedError,
    PollIntervalExceededError,
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
from partitions._base.records import Record
from partitions._base.serde import (
    BytesSerializer,
    JsonSerializer,
    ModelSerializer,
    MsgpackSerializer,
    Serializer,
)
from partitions._base.types import TopicPartition
from partitions._client.config import ClientConfig, ConsumerConfig, ProducerConfig
from partitions._client.connection import Connection, ServerInfo, connect
from partitions._client.replicas import EmbeddedReplicaSet
from partitions._client.server import EmbeddedServer
from partitions._consumer.aio import AsyncConsumer
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer, RecordFuture, RecordMetadata
from partitions._producer.router import Router
from partitions._runner.retry import RetryPolicy
from partitions._runner.runner import RunStats, run

__all__ = [
    "AsyncConsumer",
    "BufferFullError",
    "BytesSerializer",
    "ClientConfig",
    "ClosedError",
    "ConfigError",
    "Connection",
    "ConnectionFailedError",
    "Consumer",
    "ConsumerConfig",
    "DeadLetter",
    "DeadLetters",
    "DuplicateInstanceError",
    "EmbeddedReplicaSet",
    "EmbeddedServer",
    "EvictionPolicyError",
    "FencedError",
    "GroupAdmin",
    "GroupSettings",
    "InvalidNameError",
    "JsonSerializer",
    "MembershipError",
    "ModelSerializer",
    "MsgpackSerializer",
    "NotEnoughReplicasError",
    "NotOwnerError",
    "OperationTimeoutError",
    "PartstreamError",
    "PermissionDeniedError",
    "PollIntervalExceededError",
    "Position",
    "Producer",
    "ProducerConfig",
    "RebalanceListener",
    "Record",
    "RecordFuture",
    "RecordMetadata",
    "RecordTooLargeError",
    "RetryPolicy",
    "Router",
    "RunStats",
    "SerializationError",
    "Serializer",
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
    "acl_rules",
    "check_lag",
    "connect",
    "execute_group_seek",
    "group_lag",
    "plan_group_seek",
    "replay",
    "run",
]
