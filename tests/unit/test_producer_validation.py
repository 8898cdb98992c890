"""The producer's limits and retry policy, without a server: config checks, record shape,
which errors are retried and how soon, and the errors futures fail with."""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as rex

from partitions._base.errors import (
    ConfigError,
    ConnectionFailedError,
    DeliveryTimeoutError,
    InvalidRecordError,
    SequenceLostError,
    SerializationError,
    ServerOutOfMemoryError,
    WrongTypeError,
)
from partitions._base.records import MAX_HEADERS, encode_headers, entry_fields
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._producer.batch import Batch, NotSentError
from partitions._producer.delivery import (
    DeliveryPolicy,
    Verdict,
    classify,
    expiry_error,
    final_error,
    in_doubt,
)


# -- config -----------------------------------------------------------------------------------
def test_defaults_are_kafkas() -> None:
    cfg = ProducerConfig()
    assert cfg.delivery_timeout_ms == 120_000
    assert (cfg.retry_backoff_ms, cfg.retry_backoff_max_ms) == (100, 1000)
    assert cfg.retries == 2**31 - 1  # the timeout decides, as in Kafka


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delivery_timeout_ms": 5, "linger_ms": 5}, "delivery_timeout_ms .* above linger_ms"),
        ({"delivery_timeout_ms": 0}, "delivery_timeout_ms"),
        ({"delivery_timeout_ms": float("inf")}, "finite"),
        ({"retry_backoff_ms": float("nan")}, "finite"),
        ({"retry_backoff_ms": -1}, "retry_backoff_ms must be >= 0"),
        ({"retry_backoff_ms": 500, "retry_backoff_max_ms": 100}, "at least retry_backoff_ms"),
        ({"retries": -1}, "retries must be >= 0"),
        ({"retries": 1.5}, "retries must be an integer"),
        ({"max_record_bytes": 64 * 1024 * 1024 + 1}, "64 MiB"),
        ({"delivery_timeout_ms": "120000"}, "must be a number"),
    ],
)
def test_bad_producer_settings_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ProducerConfig(**kwargs)


def test_largest_record_limit_is_accepted() -> None:
    assert ProducerConfig(max_record_bytes=64 * 1024 * 1024).max_record_bytes == 2**26


def test_delivery_timeout_must_cover_linger_and_one_socket_timeout() -> None:
    client = ClientConfig(url="redis://localhost", socket_timeout=2.0)
    ProducerConfig(delivery_timeout_ms=2005, linger_ms=5).check_against(client)
    with pytest.raises(ConfigError, match="linger_ms \\+ the socket timeout"):
        ProducerConfig(delivery_timeout_ms=2004, linger_ms=5).check_against(client)


# -- record shape -----------------------------------------------------------------------------
def test_header_count_is_limited_before_encoding() -> None:
    at_limit = {f"h{i}": "x" for i in range(MAX_HEADERS)}
    assert len(entry_fields(b"k", b"v", encode_headers(at_limit))) == 4 + 2 * MAX_HEADERS
    with pytest.raises(InvalidRecordError, match="4100 headers, over the limit of 1000"):
        encode_headers({f"h{i}": "x" for i in range(4100)})
    assert issubclass(InvalidRecordError, SerializationError)


def test_a_record_stays_far_below_luas_unpack_limit() -> None:
    # The append script unpacks a record's fields; a dead letter adds 12 metadata fields.
    assert 4 + 2 * MAX_HEADERS + 2 * 12 < 7_900


# -- what is retried --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("err", "verdict"),
    [
        (rex.ResponseError("Function not found"), Verdict.BACKOFF),
        (rex.MovedError("3999 127.0.0.1:6381"), Verdict.NOW),
        (rex.AskError("3999 127.0.0.1:6381"), Verdict.NOW),
        (rex.ConnectionError("Connection refused"), Verdict.BACKOFF),
        (NotSentError("refused"), Verdict.BACKOFF),
        (rex.TimeoutError("Timeout reading"), Verdict.BACKOFF),
        (ConnectionResetError(104, "reset"), Verdict.BACKOFF),
        (rex.BusyLoadingError("Redis is loading the dataset in memory"), Verdict.BACKOFF),
        (rex.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
         Verdict.BACKOFF),
        (rex.ResponseError("OOM command not allowed when used memory"), Verdict.BACKOFF),
        (rex.ResponseError("BUSY Redis is busy running a script"), Verdict.BACKOFF),
        (rex.TryAgainError("Multiple keys request during rehashing of slot"), Verdict.BACKOFF),
        (rex.ClusterDownError("The cluster is down"), Verdict.BACKOFF),
        (rex.MasterDownError("Link with MASTER is down"), Verdict.BACKOFF),
        (rex.ReadOnlyError("You can't write against a read only replica."), Verdict.BACKOFF),
        (rex.ResponseError("NOREPLICAS Not enough good replicas to write."), Verdict.BACKOFF),
        (rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"),
         Verdict.FAIL),
        (rex.ResponseError("BUSYGROUP Consumer Group name already exists"), Verdict.FAIL),
        (rex.ResponseError("OUTOFSEQ producer p sent batch 3 after 1"), Verdict.FAIL),
        (rex.ResponseError("BADBATCH record 6 has field count 8202"), Verdict.FAIL),
        (rex.NoPermissionError("this user has no permissions"), Verdict.FAIL),
        (ValueError("a bug"), Verdict.FAIL),
    ],
)  # fmt: skip
def test_classify(err: BaseException, verdict: Verdict) -> None:
    assert classify(err) is verdict


def test_only_a_lost_reply_leaves_a_batch_in_doubt() -> None:
    assert in_doubt(rex.ConnectionError("Connection reset by peer"))
    assert in_doubt(rex.TimeoutError("Timeout reading from socket"))
    assert not in_doubt(NotSentError("Connection refused"))  # nothing was written
    assert not in_doubt(rex.BusyLoadingError("loading"))  # a refusal
    assert not in_doubt(rex.OutOfMemoryError("oom"))
    assert not in_doubt(rex.ResponseError("WRONGTYPE"))


def _policy(**kwargs: Any) -> DeliveryPolicy:
    base: dict[str, Any] = {
        "timeout": 120.0, "backoff": 0.1, "backoff_max": 1.0, "retries": 2**31 - 1,
        "rand": lambda: 0.5,
    }  # fmt: skip
    base.update(kwargs)
    return DeliveryPolicy(**base)


def test_backoff_doubles_up_to_its_cap_with_bounded_jitter() -> None:
    policy = _policy()
    assert [round(policy.delay(n), 3) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.delay(10_000) == 1.0  # no overflow however long the outage
    assert _policy(rand=lambda: 0.0).delay(1) == pytest.approx(0.08)
    assert _policy(rand=lambda: 1.0).delay(1) == pytest.approx(0.12)


def test_next_try_until_the_deadline_then_give_up() -> None:
    policy = _policy()
    refused = rex.ConnectionError("refused")
    assert policy.next_try(refused, 1, now=10.0, deadline=130.0) == pytest.approx(10.1)
    assert policy.next_try(refused, 9, now=10.0, deadline=130.0) == pytest.approx(11.0)
    # The last wait ends at the deadline: one more attempt, then the future fails after it.
    assert policy.next_try(refused, 9, now=129.9, deadline=130.0) == 130.0
    assert policy.next_try(refused, 9, now=130.0, deadline=130.0) is None
    assert policy.next_try(rex.MovedError("1 h:1"), 1, now=10.0, deadline=130.0) == 10.0
    assert policy.next_try(rex.ResponseError("WRONGTYPE x"), 1, 10.0, 130.0) is None


def test_retries_is_an_optional_cap_within_the_timeout() -> None:
    capped = _policy(retries=2)
    refused = rex.ConnectionError("refused")
    assert capped.next_try(refused, 2, now=1.0, deadline=100.0) is not None
    assert capped.next_try(refused, 3, now=1.0, deadline=100.0) is None
    assert capped.next_try(refused, 3, now=1.0, deadline=100.0, extra=20) is not None


def test_policy_from_config() -> None:
    policy = DeliveryPolicy.from_config(
        ProducerConfig(delivery_timeout_ms=30_000, retry_backoff_ms=50, retry_backoff_max_ms=800)
    )
    assert (policy.timeout, policy.backoff, policy.backoff_max) == (30.0, 0.05, 0.8)
    assert policy.deadline(5.0) == 35.0


# -- what futures fail with -------------------------------------------------------------------
class _Route:
    """Just what a Batch needs to name itself in errors."""


def _batch(attempts: int = 0) -> Batch:
    batch = Batch("orders", 3, _Route(), 100.0, 220.0)  # type: ignore[arg-type]
    batch.attempts = attempts
    return batch


def test_final_error_is_the_last_error_typed_and_says_how_long() -> None:
    oom = final_error(_batch(40), rex.OutOfMemoryError("command not allowed"), now=220.5)
    assert isinstance(oom, ServerOutOfMemoryError) and oom.retriable
    assert "orders/3 (gave up after 41 attempts in 120.5s)" in str(oom)
    down = final_error(_batch(7), rex.ConnectionError("Connection refused"), now=220.0)
    assert isinstance(down, ConnectionFailedError) and down.retriable
    wrong = final_error(_batch(), rex.ResponseError("WRONGTYPE Operation"), now=100.1)
    assert isinstance(wrong, WrongTypeError) and "gave up" not in str(wrong)
    assert isinstance(wrong.__cause__, rex.ResponseError)
    lost = final_error(_batch(), rex.ResponseError("OUTOFSEQ producer p is unknown"), 100.1)
    assert type(lost) is SequenceLostError and "this batch was not appended" in str(lost)
    assert not lost.retriable


def test_an_unsent_batch_expires_with_its_partitions_last_error() -> None:
    err = expiry_error(_batch(), rex.OutOfMemoryError("command not allowed"), 120_000)
    assert isinstance(err, ServerOutOfMemoryError)
    assert "not sent within delivery_timeout_ms=120000, behind a failing batch" in str(err)
    err = expiry_error(_batch(), None, 120_000)
    assert isinstance(err, DeliveryTimeoutError) and err.retriable
