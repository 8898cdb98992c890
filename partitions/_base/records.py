"""Records and their codec: what a record is on the wire, how one is encoded, and stream ids.

A record on the wire is a plain stream entry any Redis client can read:

* ``key``   the record key (absent for a keyless record),
* ``value`` the value bytes, as given or JSON by orjson (absent for a tombstone),
* ``h:<name>`` one field per header.

The entry ID is the offset; its millisecond part is the append time (``timestamp``). Decoding
server replies into records is :mod:`partitions._base.replies`' job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from partitions._base.errors import InvalidRecordError, RecordTooLargeError, SerializationError

KEY_FIELD = b"key"
VALUE_FIELD = b"value"
HEADER_PREFIX = b"h:"

Value = (
    bytes | bytearray | memoryview | str | dict[str, Any] | list[Any] | int | float | bool | None
)
Key = bytes | str | int | None


class Record:
    """One record read from a partition. Immutable by convention; cheap to create.

    ``key``, ``value`` and ``headers`` are partstream's own fields. An entry another client
    wrote (a raw ``XADD`` with fields of its own) is delivered too: its data is in
    :attr:`fields` and :attr:`foreign` is true (or, by ConsumerConfig's ``foreign_entries``,
    it goes to the dead-letter stream as ``malformed`` instead).

    With a consumer's ``value_serializer`` (``key_serializer``), ``value`` (``key``) is the
    object it loaded; :attr:`raw_value` (:attr:`raw_key`) keeps the bytes as stored.
    """

    __slots__ = ("_raw", "headers", "id", "key", "partition", "topic", "value")

    # Hand-outs of this record to the application, this one included, as the server has
    # recorded them (see consume.lua): 1 for a record read for the first time. A record
    # whose previous consumer crashed before acking it may have been handed out once more
    # than this says (a first hand-out is not written on the hot path). A class default:
    # only redelivered records (_Redelivered) carry their own.
    deliveries = 1
    _claim = False  # a recovered record: its hand-out is recorded on the server first

    def __init__(
        self,
        topic: str,
        partition: int,
        id: str,
        key: bytes | None,
        value: bytes | None,
        headers: dict[str, bytes],
        raw: list[bytes] | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.id = id
        self.key = key
        self.value = value
        self.headers = headers
        self._raw = raw

    def again(self) -> Record:
        """This record as it is delivered again after a nack: one more delivery, whose
        hand-out the consumer records on the server first."""
        return _Redelivered(self, self.deliveries + 1)

    def _recorded(self) -> None:
        """Its hand-out is on the server now (only a recovered record has one to record)."""

    @property
    def fields(self) -> dict[bytes, bytes]:
        """The stream entry's raw fields, as any Redis client sees them (a field given twice
        keeps its last value)."""
        raw = self._raw
        if raw is None:
            return {}
        return dict(zip(raw[::2], raw[1::2], strict=False))

    @property
    def raw_value(self) -> bytes | None:
        """The value's bytes as stored (``value`` itself when no serializer loaded it)."""
        return _first(self._raw, VALUE_FIELD, self.value)

    @property
    def raw_key(self) -> bytes | None:
        """The key's bytes as stored (``key`` itself when no serializer loaded it)."""
        return _first(self._raw, KEY_FIELD, self.key)

    @property
    def foreign(self) -> bool:
        """True if the entry has fields partstream does not write (another client's entry)."""
        return _is_foreign(self._raw or [])

    @property
    def timestamp(self) -> int:
        """Append time in epoch milliseconds (the entry ID's first part)."""
        return int(self.id.partition("-")[0])

    def text(self) -> str | None:
        """The value's bytes decoded as UTF-8."""
        raw = self.raw_value
        return None if raw is None else raw.decode("utf-8")

    def json(self) -> Any:
        """The value's bytes parsed as JSON (orjson)."""
        raw = self.raw_value
        if raw is None:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise SerializationError(
                f"record {self.topic}/{self.partition}@{self.id}: {err}"
            ) from err

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: bytes become text (JSON values are embedded as JSON)."""
        return {
            "topic": self.topic,
            "partition": self.partition,
            "id": self.id,
            "key": _display(self.raw_key),
            "value": _display_value(self.raw_value),
            "headers": {k: _display(v) for k, v in self.headers.items()},
            "timestamp": self.timestamp,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.topic, self.partition, self.id) == (other.topic, other.partition, other.id)

    def __hash__(self) -> int:
        return hash((self.topic, self.partition, self.id))

    def __repr__(self) -> str:
        return (
            f"Record(topic={self.topic!r}, partition={self.partition}, id={self.id!r}, "
            f"key={self.key!r}, value={_short(self.value)})"
        )


class _Redelivered(Record):
    """A record recovered from the group's pending list (takeover, reclaim, nack): it knows
    its deliveries, and its hand-out is recorded on the server before it happens."""

    __slots__ = ("_claim", "deliveries")

    def __init__(self, rec: Record, deliveries: int) -> None:
        super().__init__(
            rec.topic, rec.partition, rec.id, rec.key, rec.value, rec.headers, rec._raw
        )
        self.deliveries = deliveries
        self._claim = True

    def _recorded(self) -> None:
        self._claim = False


def _is_foreign(flat: list[bytes]) -> bool:
    if len(flat) % 2:
        return True
    if len(flat) == 2 and flat[0] == HEADER_PREFIX and flat[1] == b"":
        return False  # an empty tombstone
    seen_key = seen_value = False
    for name in flat[::2]:
        if name == KEY_FIELD:
            if seen_key:
                return True
            seen_key = True
        elif name == VALUE_FIELD:
            if seen_value:
                return True
            seen_value = True
        elif not (name.startswith(HEADER_PREFIX) and len(name) > 2):
            return True
    return False


def _first(flat: list[bytes] | None, name: bytes, default: bytes | None) -> bytes | None:
    """The first ``name`` field's value of raw fields (as the record parser reads it)."""
    if flat is None:
        return default
    for i in range(0, len(flat) - 1, 2):
        if flat[i] == name:
            return flat[i + 1]
    return None


def _short(value: Any) -> str:
    if value is None:
        return "None"
    if not isinstance(value, bytes):  # an object a serializer loaded
        text = repr(value)
        return text[:60] + "..." if len(text) > 60 else text
    return repr(value[:40] + b"..." if len(value) > 40 else value)


def _display(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _display_value(raw: bytes | None) -> Any:
    if raw is None:
        return None
    if raw[:1] in (b"{", b"["):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return _display(raw)


# -- encoding -----------------------------------------------------------------------------
# Headers per record. A record is one XADD of up to 4 + 2 * MAX_HEADERS field arguments (key,
# value, headers) passed through Lua's unpack(), whose C stack holds about 8,000 values; a dead
# letter copies every field plus 12 metadata fields into one XADD too. 1,000 keeps both (2,004
# and ~2,030 arguments) far below that limit.
MAX_HEADERS = 1000


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SerializationError(f"{what} is not valid UTF-8 text: {err}") from None


def encode_key(key: Key) -> bytes | None:
    if key is None or type(key) is bytes:
        return key
    if isinstance(key, str):
        return _utf8(key, "key")
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode()
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    raise SerializationError(f"a key must be bytes, str or int, not {type(key).__name__}")


def encode_value(value: Value) -> bytes | None:
    """bytes as given, str as UTF-8, anything JSON-able through orjson, None = tombstone."""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        return _utf8(value, "value")
    if value is None:
        return None
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    try:
        return orjson.dumps(value)
    except TypeError as err:
        raise SerializationError(
            f"value of type {type(value).__name__} is not JSON-serializable: {err}"
        ) from err


def encode_headers(headers: Mapping[str, str | bytes] | None) -> list[bytes]:
    """Headers as a flat [field, value, ...] list with the ``h:`` prefix.

    At most :data:`MAX_HEADERS` of them (:class:`InvalidRecordError`).
    """
    if not headers:
        return []
    if len(headers) > MAX_HEADERS:
        raise InvalidRecordError(
            f"a record has {len(headers)} headers, over the limit of {MAX_HEADERS}: put the "
            "rest in the value"
        )
    out: list[bytes] = []
    for name, val in headers.items():
        if not isinstance(name, str) or not name:
            raise SerializationError(f"header names must be non-empty strings, got {name!r}")
        out.append(HEADER_PREFIX + _utf8(name, f"header name {name!r}"))
        if isinstance(val, str):
            out.append(_utf8(val, f"header {name!r}"))
        elif isinstance(val, bytes | bytearray):
            out.append(bytes(val))
        else:
            raise SerializationError(
                f"header {name!r} must be str or bytes, not {type(val).__name__}"
            )
    return out


def entry_fields(key: bytes | None, value: bytes | None, headers: list[bytes]) -> list[bytes]:
    """The field/value list of one stream entry."""
    fields: list[bytes] = []
    if key is not None:
        fields += (KEY_FIELD, key)
    if value is not None:
        fields += (VALUE_FIELD, value)
    fields += headers
    if not fields:
        # XADD needs at least one field: an empty tombstone carries an empty header block.
        fields = [HEADER_PREFIX, b""]
    return fields


def check_size(size: int, limit: int) -> None:
    if size > limit:
        raise RecordTooLargeError(f"record of {size} bytes is over max_record_bytes={limit}")


def id_timestamp(stream_id: str) -> int:
    return int(stream_id.partition("-")[0])


def parse_id(text: str) -> tuple[int, int]:
    """``"ms-seq"`` (or ``"ms"``) as a tuple; raises ValueError if malformed."""
    ms, _, seq = text.partition("-")
    if not ms.isdigit() or (seq and not seq.isdigit()):
        raise ValueError(f"not a stream id: {text!r}")
    return int(ms), int(seq or 0)
