"""Bad input is a typed error raised before anything touches a server."""

from __future__ import annotations

import pytest

from partitions._admin.apply import parse
from partitions._admin.replay import Position
from partitions._admin.topics import TopicSpec
from partitions._base.errors import (
    ConfigError,
    InvalidNameError,
    RecordTooLargeError,
    SerializationError,
)
from partitions._base.keys import Keys, TopicLayout, validate_name
from partitions._base.records import (
    check_size,
    encode_headers,
    encode_key,
    encode_value,
    entry_fields,
)
from partitions._base.replies import record_from_entry
from partitions._client.config import ClientConfig, ProducerConfig, redact_url


@pytest.mark.parametrize(
    "name",
    ["", "a{b}", "a*", "a?", "a[1]", "a b", "a\tb", "a\x00", "a:b", "-lead", "x" * 101, b"\xff"],
)
def test_bad_names(name: object) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(name)


def test_good_names_and_cluster_safe_keys() -> None:
    assert validate_name("orders.v2_eu-1") == "orders.v2_eu-1"
    k = Keys("ps")
    old = TopicLayout("orders", 8)  # a topic stored without tags keeps the original keys
    assert k.stream(old, 3) == "ps:t:{orders:3}"
    # every key of one partition shares the partition's hash tag; partitions differ
    tags = {key[key.index("{") : key.index("}") + 1] for key in k.partition_keys(old, 3)}
    assert tags == {"{orders:3}"}
    assert k.stream(old, 4) != k.stream(old, 3)
    new = TopicLayout.spread("orders", 8)
    tags = {key[key.index("{") : key.index("}") + 1] for key in k.partition_keys(new, 3)}
    assert tags == {"{orders:3:" + new.tags[3] + "}"}
    assert len({k.stream(new, p) for p in range(8)}) == 8


@pytest.mark.parametrize(
    "url",
    ["http://x", "redis://", "unix://", "redis://h:99999", "ftp://host:1", "redis://h:abc"],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        ClientConfig(url=url)


def test_good_urls_and_redaction() -> None:
    for url in (
        "redis://localhost:6379/0",
        "rediss://u:p@h:6380",
        "unix:///tmp/s.sock",
        "redis+cluster://h:7000",
    ):
        ClientConfig(url=url)
    assert "secret" not in redact_url("redis://user:secret@host:6379")
    assert redact_url("redis://user:secret@host:6379") == "redis://user:***@host:6379"


def test_producer_config_checks() -> None:
    with pytest.raises(ConfigError):
        ProducerConfig(batch_size=0)
    with pytest.raises(ConfigError):
        ProducerConfig(buffer_records=10, batch_size=100)
    with pytest.raises(ConfigError):
        ProducerConfig(linger_ms=-1)


def test_codec() -> None:
    assert encode_key("é") == "é".encode()
    assert encode_key(42) == b"42"
    assert encode_value({"a": 1}) == b'{"a":1}'
    assert encode_value("x") == b"x"
    assert encode_value(None) is None
    with pytest.raises(SerializationError):
        encode_value(object())  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        encode_key(1.5)  # type: ignore[arg-type]
    with pytest.raises(SerializationError):
        encode_headers({"": "x"})
    with pytest.raises(SerializationError):
        encode_headers({"a": 1})  # type: ignore[dict-item]
    with pytest.raises(RecordTooLargeError):
        check_size(11, 10)


def test_entry_round_trip() -> None:
    fields = entry_fields(b"k", b"v", encode_headers({"trace": "abc"}))
    rec = record_from_entry("t", 2, [b"1700000000000-5", fields])
    assert (rec.key, rec.value, rec.headers, rec.timestamp) == (
        b"k",
        b"v",
        {"trace": b"abc"},
        1700000000000,
    )
    tomb = record_from_entry("t", 0, [b"1-0", entry_fields(None, None, [])])
    assert tomb.key is None and tomb.value is None and tomb.headers == {}


def test_positions() -> None:
    assert Position.parse("earliest").kind == "earliest"
    assert Position.parse("latest").kind == "latest"
    assert Position.parse("@1700000000000") == Position("id", "1700000000000-0")
    assert Position.parse("1700000000000-7") == Position("id", "1700000000000-7")
    for bad in ("yesterday", "@x", "1-2-3", "-5"):
        with pytest.raises(ConfigError):
            Position.parse(bad)


def test_topic_spec_and_config_file_checks() -> None:
    with pytest.raises(ConfigError):
        TopicSpec("t", 0)
    with pytest.raises(ConfigError):
        TopicSpec("t", 4, retention_ms=-1)
    with pytest.raises(ConfigError, match="unknown setting"):
        parse({"topics": {"t": {"partitions": 2, "partitons": 3}}})
    with pytest.raises(ConfigError, match="unknown table"):
        parse({"topic": {}})
    with pytest.raises(ConfigError, match="required"):
        parse({"topics": {"t": {"retention_ms": 5}}})
    with pytest.raises(ConfigError):
        parse({"groups": {"g": {"heartbeat_interval_ms": 5000, "session_timeout_ms": 6000}}})
    with pytest.raises(InvalidNameError):
        parse({"topics": {"bad name": {"partitions": 1}}})
    ok = parse({"topics": {"t": {"partitions": 2, "regions": {"eu": [0, 1]}}}, "groups": {"g": {}}})
    assert ok.topics["t"].regions == {"eu": (0, 1)} and "g" in ok.groups


def test_tls_always_checks_the_chain_and_the_host_name() -> None:
    from partitions._client.connection import _client_kwargs

    kwargs = _client_kwargs(ClientConfig(url="rediss://h:1"), tls=True)
    assert kwargs["ssl_check_hostname"] is True and kwargs["ssl_cert_reqs"] == "required"
    assert "ssl_check_hostname" not in _client_kwargs(ClientConfig(url="redis://h:1"), tls=False)
