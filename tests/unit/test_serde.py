"""Serializers (pure): round trips, typed errors, the consumer's Decoder, Record.raw_value."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import orjson
import pydantic
import pytest

from partitions import (
    BytesSerializer,
    ConfigError,
    JsonSerializer,
    ModelSerializer,
    MsgpackSerializer,
    SerializationError,
    Serializer,
)
from partitions._base.records import Record, encode_value
from partitions._base.replies import records_from_read
from partitions._base.serde import Decoder, check_serializer, decoder, encoder


class Order(pydantic.BaseModel):
    id: int
    item: str
    price: float


class Payment(msgspec.Struct):
    id: int
    amount: int
    tags: list[str] = []


def test_bytes_serializer_passes_bytes_and_utf8_text() -> None:
    s = BytesSerializer()
    assert s.dumps(b"\x00\xff") == b"\x00\xff"
    assert s.dumps(bytearray(b"ab")) == b"ab" and s.dumps(memoryview(b"cd")) == b"cd"
    assert s.dumps("é") == "é".encode()
    assert s.loads(b"\x00\xff") == b"\x00\xff"
    with pytest.raises(SerializationError, match="dict"):
        s.dumps({"a": 1})
    with pytest.raises(SerializationError, match="UTF-8"):
        s.dumps("\udcff")


def test_json_serializer_writes_what_the_default_producer_writes() -> None:
    s = JsonSerializer()
    value = {"id": 1, "items": [1.5, None, "x"], "ok": True}
    assert s.dumps(value) == encode_value(value)  # bit for bit: plain producers interoperate
    assert s.loads(s.dumps(value)) == value
    assert s.dumps("abc") == b'"abc"'  # a JSON string, unlike the default's raw UTF-8
    assert JsonSerializer(orjson.OPT_SORT_KEYS).dumps({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
    with pytest.raises(SerializationError, match="set"):
        s.dumps({1, 2})
    with pytest.raises(SerializationError, match="not JSON"):
        s.loads(b"{nope")


def test_msgpack_serializer_round_trips_plain_objects() -> None:
    s = MsgpackSerializer()
    value = {"id": 1, "blob": b"\x00\x01", "xs": [1, 2.5, None, "é"]}
    data = s.dumps(value)
    assert data == msgspec.msgpack.encode(value) and s.loads(data) == value
    with pytest.raises(SerializationError, match="object"):
        s.dumps(object())
    with pytest.raises(SerializationError, match="MessagePack"):
        s.loads(b"\xc1")  # a byte MessagePack never uses


def test_pydantic_model_round_trip_and_validation_errors() -> None:
    s = ModelSerializer(Order)
    order = Order(id=7, item="tea", price=2.5)
    data = s.dumps(order)
    assert orjson.loads(data) == {"id": 7, "item": "tea", "price": 2.5}
    assert s.loads(data) == order
    with pytest.raises(SerializationError, match="price"):
        s.loads(b'{"id": 7, "item": "tea"}')  # a required field missing
    with pytest.raises(SerializationError, match="id"):
        s.loads(b'{"id": "seven", "item": "tea", "price": 1}')
    with pytest.raises(SerializationError, match="Invalid JSON"):
        s.loads(b"not json")
    with pytest.raises(SerializationError, match="expected a Order, got dict"):
        s.dumps({"id": 7, "item": "tea", "price": 2.5})
    with pytest.raises(ConfigError, match="JSON"):
        ModelSerializer(Order, format="msgpack")


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_msgspec_struct_round_trip_and_validation_errors(fmt: Any) -> None:
    s = ModelSerializer(Payment, format=fmt)
    p = Payment(id=1, amount=250, tags=["card"])
    assert s.loads(s.dumps(p)) == p
    wrong = {"id": 1, "amount": "250"}
    raw = orjson.dumps(wrong) if fmt == "json" else msgspec.msgpack.encode(wrong)
    with pytest.raises(SerializationError, match="amount"):
        s.loads(raw)
    with pytest.raises(SerializationError):
        s.dumps(object())


def test_msgspec_decodes_into_other_types_too() -> None:
    @dataclasses.dataclass
    class Point:
        x: int
        y: int

    assert ModelSerializer(Point).loads(b'{"x": 1, "y": 2}') == Point(1, 2)
    assert ModelSerializer(list[int]).loads(b"[1, 2]") == [1, 2]
    with pytest.raises(SerializationError):
        ModelSerializer(list[int]).loads(b'["a"]')
    with pytest.raises(ConfigError, match="format"):
        ModelSerializer(Payment, format="xml")  # type: ignore[arg-type]


def test_every_shipped_serializer_satisfies_the_protocol() -> None:
    for s in (BytesSerializer(), JsonSerializer(), MsgpackSerializer(), ModelSerializer(Order)):
        assert isinstance(s, Serializer) and check_serializer(s, "value_serializer") is s
    assert check_serializer(None, "value_serializer") is None
    with pytest.raises(ConfigError, match="key_serializer"):
        check_serializer(JsonSerializer, "key_serializer")  # the class, not an instance
    with pytest.raises(ConfigError, match="dumps"):
        check_serializer(object(), "value_serializer")
    with pytest.raises(ConfigError):
        decoder("json", None)


def records(*entries: list[bytes]) -> list[Record]:
    return records_from_read("t", 0, [[f"1-{i}".encode(), e] for i, e in enumerate(entries)])


def test_decoder_loads_in_place_and_reports_what_does_not_load() -> None:
    rs = records(
        [b"key", b"k1", b"value", b'{"id": 1, "item": "a", "price": 1}'],
        [b"key", b"k2", b"value", b'{"id": 2}'],  # invalid
        [b"key", b"k3"],  # tombstone: no value
        [b"value", b"[]", b"h:trace", b"x"],
    )
    failed = Decoder(JsonSerializer(), None)(rs)
    assert failed == []
    rs = records(
        [b"key", b"k1", b"value", b'{"id": 1, "item": "a", "price": 1}'],
        [b"key", b"k2", b"value", b'{"id": 2}'],
        [b"key", b"k3"],
    )
    failed = Decoder(ModelSerializer(Order), BytesSerializer())(rs)
    assert [r.id for r, _ in failed] == ["1-1"]
    assert failed[0][1].startswith("SerializationError: ") and "item" in failed[0][1]
    assert rs[0].value == Order(id=1, item="a", price=1) and rs[0].key == b"k1"
    assert rs[0].raw_value == b'{"id": 1, "item": "a", "price": 1}'
    assert rs[2].value is None and rs[2].raw_value is None  # a tombstone stays one


def test_any_exception_of_a_user_serializer_is_a_failure() -> None:
    class Picky:
        def dumps(self, obj: Any) -> bytes:
            return bytes(obj)

        def loads(self, data: bytes) -> Any:
            if data == b"bad":
                raise KeyError("nope")
            return data.upper()

    rs = records([b"value", b"ok"], [b"value", b"bad"])
    failed = Decoder(None, None)(rs) + Decoder(Picky(), None)(rs)
    assert [(r.id, text) for r, text in failed] == [("1-1", "KeyError: 'nope'")]
    assert rs[0].value == b"OK" and rs[0].raw_value == b"ok"


def test_keys_load_with_their_own_serializer() -> None:
    rs = records([b"key", b"42", b"value", b"v"], [b"value", b"w"])
    assert Decoder(None, JsonSerializer())(rs) == []
    assert (rs[0].key, rs[0].raw_key, rs[0].value) == (42, b"42", b"v")
    assert rs[1].key is None


def test_a_record_with_a_loaded_value_still_shows_its_bytes() -> None:
    [r] = records([b"key", b"k", b"value", b'{"a": 1}'])
    Decoder(ModelSerializer(dict[str, int]), None)([r])
    assert r.value == {"a": 1}
    assert r.text() == '{"a": 1}' and r.json() == {"a": 1}
    assert r.to_dict()["value"] == {"a": 1} and r.to_dict()["key"] == "k"
    assert "{'a': 1}" in repr(r)


def test_default_records_are_untouched() -> None:
    [r] = records([b"key", b"k", b"value", b"v"])
    assert (r.value, r.raw_value, r.key, r.raw_key) == (b"v", b"v", b"k", b"k")
    plain = Record("t", 0, "1-0", b"k", b"v", {})  # built by hand, no raw fields
    assert (plain.raw_value, plain.raw_key) == (b"v", b"k")


def test_encoder_serializes_values_and_keys_and_keeps_tombstones() -> None:
    enc = encoder(ModelSerializer(Order), JsonSerializer())
    assert enc is not None and encoder(None, None) is None
    value, key = enc(Order(id=1, item="a", price=2), {"tenant": 7})
    assert value == b'{"id":1,"item":"a","price":2.0}' and key == b'{"tenant":7}'
    assert enc(None, None) == (None, None)  # a keyless tombstone


def test_encoder_turns_any_failure_into_a_serialization_error() -> None:
    class Broken:
        def dumps(self, obj: Any) -> bytes:
            raise RuntimeError("disk on fire")

        def loads(self, data: bytes) -> Any:
            return data

    class NotBytes(Broken):
        def dumps(self, obj: Any) -> bytes:
            return "text"  # type: ignore[return-value]

    with pytest.raises(SerializationError, match="RuntimeError: disk on fire"):
        encoder(Broken(), None)(b"x", None)  # type: ignore[misc]
    with pytest.raises(SerializationError, match="not bytes"):
        encoder(NotBytes(), None)(b"x", None)  # type: ignore[misc]
    with pytest.raises(SerializationError, match="expected a Order"):
        encoder(ModelSerializer(Order), None)({"id": 1}, None)  # type: ignore[misc]
