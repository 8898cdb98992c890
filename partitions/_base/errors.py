"""The one error tree of partstream, shared by the data plane and the control plane.

Users catch these and never redis-py's types: redis errors are translated where they occur
(``raise X(...) from err``) by :func:`translate`.

    PartstreamError
    ├── ConfigError                 bad settings, TOML, URL or CLI input (nothing was written)
    │   └── InvalidNameError        a topic/group/member name outside the allowed alphabet
    ├── ConnectionFailedError       cannot reach the server, or it dropped us (retriable)
    │   └── OperationTimeoutError   the server did not answer in time (retriable)
    ├── ServerError                 the server cannot serve partstream as it is
    │   ├── ServerTooOldError       below Redis 7.0 / Valkey 7.2
    │   ├── EvictionPolicyError     maxmemory-policy could evict stream keys
    │   ├── ServerOutOfMemoryError  OOM on write (retriable once memory frees up)
    │   ├── LibraryMissingError     partstream's server-side functions are not loaded there
    │   └── PermissionDeniedError   the ACL user may not run a command or touch a key
    ├── UnknownTopicError / UnknownGroupError   (also KeyError)
    ├── ConflictError               the change conflicts with the current state; retriable
    │   │                           where it lost a race (a concurrent topic change, a
    │   │                           group with live members)
    │   ├── TopicExistsError        create of a topic that exists (use alter)
    │   └── GroupExistsError        create of a group that exists (use alter)
    ├── WrongTypeError              a key that should be a stream/hash holds something else
    ├── StateLostError              a stream or group vanished under a live client
    ├── NotEnoughReplicasError      acks='all': too few replicas confirmed a write (in doubt)
    ├── SequenceLostError           the server lost a producer's recent sequence (OUTOFSEQ):
    │                               the batch was not appended
    ├── MembershipError             the coordinator refused a member
    │   ├── FencedError             the member's epoch is stale: drop everything and rejoin
    │   ├── UnknownMemberError      the member was evicted (session expired)
    │   ├── PollIntervalExceededError  the application did not poll within
    │   │                           max_poll_interval_ms: the member left; poll() rejoins
    │   └── DuplicateInstanceError  another live member holds the same static instance id
    ├── NotOwnerError               read/ack of a partition this member does not own
    ├── SerializationError          a value or header that cannot be encoded/decoded
    │   ├── RecordTooLargeError     a record over the configured size limit
    │   └── InvalidRecordError      a record's shape is over a fixed limit (header count)
    ├── BufferFullError             the producer's buffer stayed full past its timeout
    ├── DeliveryTimeoutError        a record got no turn within delivery_timeout_ms (retriable)
    └── ClosedError                 the producer/consumer was used after close()
"""

from __future__ import annotations

import redis.exceptions as rex


class PartstreamError(Exception):
    """Base of every error partstream raises.

    ``retriable`` tells whether the same call may succeed if simply tried again later.
    """

    retriable: bool = False


class ConfigError(PartstreamError, ValueError):
    """A setting, config file, URL or argument is invalid; nothing was written."""


class InvalidNameError(ConfigError):
    """A topic, group or member name uses characters or a length that key names cannot hold."""


class ConnectionFailedError(PartstreamError):
    """The server could not be reached or the connection broke; retry or check the URL."""

    retriable = True


class OperationTimeoutError(ConnectionFailedError):
    """The server did not answer within the socket timeout."""


class ServerError(PartstreamError):
    """The server cannot serve partstream in its current configuration."""


class ServerTooOldError(ServerError):
    """The server is older than Redis 7.0 / Valkey 7.2."""


class EvictionPolicyError(ServerError):
    """``maxmemory-policy`` would let the server silently delete streams and groups."""


class ServerOutOfMemoryError(ServerError):
    """The server refused a write because it reached maxmemory (nothing was appended)."""

    retriable = True


class LibraryMissingError(ServerError):
    """The server has not loaded this version of partstream's functions, and this user may
    not load them: run ``partstream functions load`` as an admin."""


class PermissionDeniedError(ServerError):
    """The ACL user is not allowed this command or key."""


class _NotFound(PartstreamError, KeyError):
    """A lookup that found nothing: also a KeyError, for ``except KeyError`` callers."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else ""


class UnknownTopicError(_NotFound):
    """The topic does not exist; create it with ``partstream topic create`` or ``apply``."""


class UnknownGroupError(_NotFound):
    """The consumer group does not exist."""


class ConflictError(PartstreamError):
    """The change conflicts with the server's current state; nothing was changed.

    ``retriable`` is true when the conflict is a race that may be gone on the next try (the
    topic changed between read and write; the group still had live members), false when
    trying again cannot help (the object already exists: use alter).
    """

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class TopicExistsError(ConflictError):
    """A topic with that name already exists (``alter`` changes it)."""


class GroupExistsError(ConflictError):
    """A consumer group with that name already exists (``alter`` changes its settings)."""


class WrongTypeError(PartstreamError):
    """A key partstream owns holds a value of another type (someone else wrote it)."""


class StateLostError(PartstreamError):
    """A stream or consumer group vanished under a live client.

    This happens when the server restarted without persistence or a key was deleted or
    evicted. partstream never silently re-creates it (that would duplicate or lose records):
    an operator must decide, e.g. with ``partstream group seek``.
    """


class NotEnoughReplicasError(PartstreamError):
    """A write the primary applied was not confirmed by ``min_insync_replicas`` replicas
    (``WAIT``), or not fsynced (``WAITAOF``), in time.

    The write is in doubt: it is on the primary and may or may not survive a failover. A
    producer retries the batch (its sequence number keeps the retry from duplicating it)
    until its delivery timeout; check that the replicas are up and in sync.
    """

    retriable = True


class SequenceLostError(PartstreamError):
    """The server no longer has this producer's recent sequence (``OUTOFSEQ``): a crash or a
    restart without persistence lost its last writes. The batch was not appended; the
    records written before it may be gone too. Not retriable as is: check the server's
    persistence, then produce again (a new producer starts a new sequence)."""


class MembershipError(PartstreamError):
    """The coordinator refused a membership operation."""


class FencedError(MembershipError):
    """The member's epoch is stale; it must drop all partitions and rejoin."""


class UnknownMemberError(MembershipError):
    """The member is not (or no longer) in the group; its session expired. Rejoin."""


class PollIntervalExceededError(MembershipError):
    """The application did not ask for records within ``max_poll_interval_ms``, so the member
    left the group and its partitions went to other members (Kafka's ``max.poll.interval.ms``).

    Raised once, by the first ``poll()``, iteration step or ``commit()`` after the member
    left; that call has already started the rejoin. Records handed out before it are no
    longer this member's: drop them unprocessed (their acks would be refused by the fence;
    the partitions' new owners receive them again). Poll again to continue. If handlers
    legitimately take this long, raise ``max_poll_interval_ms`` or lower
    ``max_poll_records``.
    """

    retriable = True

    def __init__(
        self,
        message: str,
        *,
        member_id: str = "",
        max_poll_interval_ms: int = 0,
        idle_s: float = 0.0,
        partitions: frozenset[tuple[str, int]] = frozenset(),
    ) -> None:
        super().__init__(message)
        self.member_id = member_id
        self.max_poll_interval_ms = max_poll_interval_ms
        # How long the application had been away when the member left.
        self.idle_s = idle_s
        # (topic, partition) pairs the member gave up.
        self.partitions = partitions


class DuplicateInstanceError(MembershipError):
    """Another live member already uses this static instance id."""


class NotOwnerError(PartstreamError):
    """The member does not own the partition (at its epoch): it may not read or ack it."""


class SerializationError(PartstreamError, ValueError):
    """A value, key or header cannot be encoded or decoded."""


class RecordTooLargeError(SerializationError):
    """A record is larger than the producer's ``max_record_bytes``."""


class InvalidRecordError(SerializationError):
    """A record's shape is outside a fixed limit, e.g. more than ``MAX_HEADERS`` headers.

    Raised by ``send()`` before anything is queued; split the headers or move them into the
    value.
    """


class BufferFullError(PartstreamError):
    """The producer's buffer stayed full for longer than its ``block_timeout``."""

    retriable = True


class DeliveryTimeoutError(PartstreamError):
    """A record was not appended within the producer's ``delivery_timeout_ms``.

    Raised on a future whose batch never got its turn (it waited behind an earlier batch of
    its partition, or behind a backlog); a batch that was sent and failed carries its last
    error instead. Nothing of the batch was appended.
    """

    retriable = True


class ClosedError(PartstreamError):
    """The producer or consumer was used after ``close()``."""


def _is_acl_refusal(msg: str) -> bool:
    # Inside a script, Redis 7.0 and Valkey word an ACL refusal without the NOPERM code.
    head = msg[:200]
    markers = ("NOPERM", "The user executing the script can't", "ACL failure in script")
    return any(m in head for m in markers)


def translate(err: Exception, context: str = "") -> PartstreamError:
    """Map a redis-py exception to the partstream error a user should see.

    ``context`` says what was being done ("appending to orders/3"); it is put in front of the
    server's message. Returns the error instead of raising so callers write
    ``raise translate(err, ...) from err`` and keep the traceback chain.
    """
    prefix = f"{context}: " if context else ""
    msg = str(err)
    if isinstance(err, PartstreamError):
        return err
    if isinstance(err, rex.TimeoutError):
        return OperationTimeoutError(f"{prefix}server did not answer in time ({msg})")
    if isinstance(err, rex.AuthenticationError):
        return PermissionDeniedError(f"{prefix}authentication failed: check the user/password")
    if isinstance(err, rex.NoPermissionError) or _is_acl_refusal(msg):
        return PermissionDeniedError(
            f"{prefix}permission denied by the server's ACL ({msg}); the user's rules do not "
            "allow this command or key (see `partstream acl print`)"
        )
    if isinstance(err, rex.ConnectionError):
        return ConnectionFailedError(f"{prefix}cannot reach the server ({msg})")
    if isinstance(err, rex.OutOfMemoryError) or msg.startswith("OOM"):
        return ServerOutOfMemoryError(f"{prefix}server is out of memory, nothing written ({msg})")
    if msg.startswith("WRONGTYPE"):
        return WrongTypeError(f"{prefix}a key holds the wrong kind of value ({msg})")
    if msg.startswith("NOGROUP"):
        return StateLostError(f"{prefix}the consumer group or stream is gone ({msg})")
    if "function not found" in msg.lower():
        return LibraryMissingError(
            f"{prefix}the server does not have this version of partstream's server-side "
            f"functions ({msg}); load them as an admin: `partstream functions load`"
        )
    return PartstreamError(f"{prefix}{msg}")
