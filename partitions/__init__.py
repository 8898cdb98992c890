"""partstream: Kafka-style partitioned streaming on Redis Streams.

The data plane and public API: topics, routing, the producer, the consumer, replay, offsets
and lag, dead letters, ACL rules, the embedded server.
Consumer groups are coordinated by :mod:`coordinator`; every type a public signature names is
exported here.
"""

from __future__ import annotations

from coordinator.listener import AsyncRebalanceListener, RebalanceListener
from partitions._admin.acl import acl_rules
from partitions._admin.deadletter import DeadLetters, ReplayResult
from partitions._admin.groups import (
    GroupAdmin,
    GroupLag,
    GroupOverview,
    LagCheck,
    PartitionReclaim,
    ReclaimResult,
    SeekPlan,
    SeekStep,
    check_lag,
    describe_with_lag,
    execute_group_seek,
    group_lag,
    plan_group_seek,
    reclaim_now,
)
from partitions._admin.lag import PartitionOffset
from partitions._admin.replay import Position, replay
from partitions._admin.topics import (
    PartitionInfo,
    TopicAdmin,
    TopicDescription,
    TopicMeta,
    TopicSpec,
)
from partitions._base.durability import Durability
from partitions._base.errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    ConflictError,
    ConnectionFailedError,
    DeliveryTimeoutError,
    DuplicateInstanceError,
    EvictionPolicyError,
    FencedError,
    GroupExistsError,
    InvalidNameError,
    InvalidRecordError,
    LibraryMissingError,
    MembershipError,
    NotEnoughReplicasError,
    NotOwnerError,
    OperationTimeoutError,
    PartstreamError,
    PermissionDeniedError,
    PollIntervalExceededError,
    RecordTooLargeError,
    SequenceLostError,
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
from partitions._base.replies import DeadLetter, StreamInfo
from partitions._base.serde import (
    BytesSerializer,
    JsonSerializer,
    ModelSerializer,
    MsgpackSerializer,
    Serializer,
)
from partitions._base.settings import GroupSettings
from partitions._base.types import (
    Grant,
    GroupDescription,
    MemberDescription,
    PartitionOwner,
    TopicPartition,
)
from partitions._client.aio import AsyncConnection, connect_async
from partitions._client.config import ClientConfig, ConsumerConfig, ProducerConfig
from partitions._client.connection import Connection, ServerInfo, connect
from partitions._client.replicas import EmbeddedReplicaSet, MemberStatus
from partitions._client.server import EmbeddedServer, ServerStatus
from partitions._consumer.aio import AsyncConsumer
from partitions._consumer.consumer import Consumer
from partitions._pipeline.pipeline import AsyncPipeline, Pipeline
from partitions._pipeline.plan import Committed, Output
from partitions._pipeline.transform import TransformStats, transform
from partitions._producer.aio import AsyncProducer, AsyncRecordFuture
from partitions._producer.producer import Producer, RecordFuture, RecordMetadata
from partitions._producer.router import Router
from partitions._runner.retry import RetryPolicy
from partitions._runner.runner import RunStats, run
from partitions._telemetry.metrics import ClientMetrics
from partitions._telemetry.tracing import TracerProvider

__all__ = [
    "AsyncConnection",
    "AsyncConsumer",
    "AsyncPipeline",
    "AsyncProducer",
    "AsyncRebalanceListener",
    "AsyncRecordFuture",
    "BufferFullError",
    "BytesSerializer",
    "ClientConfig",
    "ClientMetrics",
    "ClosedError",
    "Committed",
    "ConfigError",
    "ConflictError",
    "Connection",
    "ConnectionFailedError",
    "Consumer",
    "ConsumerConfig",
    "DeadLetter",
    "DeadLetters",
    "DeliveryTimeoutError",
    "DuplicateInstanceError",
    "Durability",
    "EmbeddedReplicaSet",
    "EmbeddedServer",
    "EvictionPolicyError",
    "FencedError",
    "Grant",
    "GroupAdmin",
    "GroupDescription",
    "GroupExistsError",
    "GroupLag",
    "GroupOverview",
    "GroupSettings",
    "InvalidNameError",
    "InvalidRecordError",
    "JsonSerializer",
    "LagCheck",
    "LibraryMissingError",
    "MemberDescription",
    "MemberStatus",
    "MembershipError",
    "ModelSerializer",
    "MsgpackSerializer",
    "NotEnoughReplicasError",
    "NotOwnerError",
    "OperationTimeoutError",
    "Output",
    "PartitionInfo",
    "PartitionOffset",
    "PartitionOwner",
    "PartitionReclaim",
    "PartstreamError",
    "PermissionDeniedError",
    "Pipeline",
    "PollIntervalExceededError",
    "Position",
    "Producer",
    "ProducerConfig",
    "RebalanceListener",
    "ReclaimResult",
    "Record",
    "RecordFuture",
    "RecordMetadata",
    "RecordTooLargeError",
    "ReplayResult",
    "RetryPolicy",
    "Router",
    "RunStats",
    "SeekPlan",
    "SeekStep",
    "SequenceLostError",
    "SerializationError",
    "Serializer",
    "ServerError",
    "ServerInfo",
    "ServerOutOfMemoryError",
    "ServerStatus",
    "ServerTooOldError",
    "StateLostError",
    "StreamInfo",
    "TopicAdmin",
    "TopicDescription",
    "TopicExistsError",
    "TopicMeta",
    "TopicPartition",
    "TopicSpec",
    "TracerProvider",
    "TransformStats",
    "UnknownGroupError",
    "UnknownMemberError",
    "UnknownTopicError",
    "WrongTypeError",
    "acl_rules",
    "check_lag",
    "connect",
    "connect_async",
    "describe_with_lag",
    "execute_group_seek",
    "group_lag",
    "plan_group_seek",
    "reclaim_now",
    "replay",
    "run",
    "transform",
]
