"""Typed payloads: the :class:`Serializer` protocol and the serializers partstream ships.

A serializer turns an application object into the bytes of a record's value (or key) and
back: ``dumps(obj) -> bytes`` on the producer, ``loads(data) -> object`` on the consumer. Give
one as ``value_serializer=`` (and ``key_serializer=``) to a producer and a consumer of the
same topic.

Without one, nothing changes and nothing extra runs: the producer writes bytes as given, str
as UTF-8 and anything else as JSON by orjson (``records.encode_value``), and the consumer
hands out the value's bytes. With one:

* the producer calls ``dumps`` in ``send()``; a value it cannot serialize raises
  :class:`~partitions._base.errors.SerializationError` there, before anything is queued;
* the consumer calls ``loads`` on each record it fetches, so ``Record.value`` is the object
  (``Record.raw_value`` keeps the bytes). A record whose value does not load is never handed
  to the application: it goes to its partition's dead-letter stream with reason
  ``deserialization`` and the error's text, and the partition flows on.

A tombstone (no value) stays ``None`` both ways: it is never given to a serializer.

Shipped serializers (models are validated on consume):

* :class:`BytesSerializer`  bytes (and str as UTF-8) in, the same bytes out;
* :class:`JsonSerializer`   JSON by orjson: the bytes the default producer writes for a dict
  or list, so a JSON consumer reads what a plain producer sent;
* :class:`MsgpackSerializer` MessagePack by msgspec (``pip install 'partstream[msgpack]'``);
* :class:`ModelSerializer`  a pydantic ``BaseModel`` (``model_validate_json``) or any type
  msgspec decodes, e.g. a ``msgspec.Struct`` (``msgspec.json.decode(type=...)``), as JSON,
  or as MessagePack with ``format="msgpack"`` (msgspec types only).
"""

from __future__ import annotations

import importlib
from typing import Any, Literal, Protocol, runtime_checkable

import orjson

from partitions._base.errors import ConfigError, SerializationError
from partitions._base.records import Record


@runtime_checkable
class Serializer(Protocol):
    """Turns objects into record bytes and back. Implementations must be thread-safe (one
    serves every ``send()`` of a producer) and should raise
    :class:`~partitions._base.errors.SerializationError` for what they cannot handle; any
    other exception from ``loads`` is treated the same way by the consumer."""

    def dumps(self, obj: Any) -> bytes:
        """The bytes of ``obj`` (never called with None: a tombstone stays a tombstone)."""
        ...

    def loads(self, data: bytes) -> Any:
        """The object ``data`` holds."""
        ...


def describe(err: BaseException) -> str:
    """An exception as a dead letter's error text: ``"ValueError: message"``."""
    return f"{type(err).__name__}: {err}"


class BytesSerializer:
    """bytes, bytearray and memoryview as they are, str as UTF-8; loads gives the bytes."""

    def dumps(self, obj: Any) -> bytes:
        if type(obj) is bytes:
            return obj
        if isinstance(obj, bytearray | memoryview):
            return bytes(obj)
        if isinstance(obj, str):
            try:
                return obj.encode("utf-8")
            except UnicodeEncodeError as err:
                raise SerializationError(f"value is not valid UTF-8 text: {err}") from None
        raise SerializationError(f"BytesSerializer takes bytes or str, not {type(obj).__name__}")

    def loads(self, data: bytes) -> bytes:
        return data

    def __repr__(self) -> str:
        return "BytesSerializer()"


class JsonSerializer:
    """JSON by orjson. ``option``: orjson's ``OPT_*`` flags for dumps (e.g.
    ``orjson.OPT_SORT_KEYS``). A str becomes a JSON string (``"abc"`` with its quotes),
    unlike the default producer, which writes a str's UTF-8 as it is."""

    def __init__(self, option: int = 0) -> None:
        self.option = option

    def dumps(self, obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, option=self.option)
        except TypeError as err:
            raise SerializationError(
                f"value of type {type(obj).__name__} is not JSON-serializable: {err}"
            ) from err

    def loads(self, data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as err:
            raise SerializationError(f"not JSON: {err}") from err

    def __repr__(self) -> str:
        return f"JsonSerializer(option={self.option})"


def _msgspec() -> Any:
    try:
        return importlib.import_module("msgspec")
    except ImportError:
        raise ConfigError(
            "MessagePack and msgspec types need msgspec: pip install 'partstream[msgpack]'"
        ) from None


class MsgpackSerializer:
    """MessagePack by msgspec (the ``msgpack`` extra): plain objects (dict, list, str, int,
    float, bool, None, bytes) and whatever msgspec encodes (Structs, dataclasses...);
    ``loads`` gives plain objects."""

    def __init__(self) -> None:
        msgspec = _msgspec()
        self._errors = (msgspec.EncodeError, TypeError, OverflowError)
        self._decode_error = msgspec.DecodeError
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder()

    def dumps(self, obj: Any) -> bytes:
        try:
            data: bytes = self._encoder.encode(obj)
        except self._errors as err:
            raise SerializationError(
                f"value of type {type(obj).__name__} cannot be MessagePack-encoded: {err}"
            ) from err
        return data

    def loads(self, data: bytes) -> Any:
        try:
            return self._decoder.decode(data)
        except self._decode_error as err:
            raise SerializationError(f"not MessagePack: {err}") from err

    def __repr__(self) -> str:
        return "MsgpackSerializer()"


class ModelSerializer:
    """Records as instances of ``model``, validated on consume.

    ``model`` is a pydantic ``BaseModel`` subclass (JSON: ``model_dump_json`` /
    ``model_validate_json``) or any type msgspec can decode into, such as a ``msgspec.Struct``
    (``msgspec.json`` or, with ``format="msgpack"``, ``msgspec.msgpack``, with
    ``type=model``). ``dumps`` takes an instance of ``model`` (msgspec also takes what its
    encoder takes); ``loads`` of bytes that do not validate raises SerializationError with
    the validation error, which the consumer dead-letters as ``deserialization``.
    """

    def __init__(self, model: Any, *, format: Literal["json", "msgpack"] = "json") -> None:
        if format not in ("json", "msgpack"):
            raise ConfigError(f"format must be 'json' or 'msgpack', not {format!r}")
        self.model, self.format = model, format
        self._pydantic = callable(getattr(model, "model_validate_json", None))
        if self._pydantic:
            if format != "json":
                raise ConfigError("a pydantic model is serialized as JSON: use format='json'")
            pydantic = importlib.import_module("pydantic")
            self._validation_error: Any = pydantic.ValidationError
            return
        msgspec = _msgspec()
        codec = msgspec.json if format == "json" else msgspec.msgpack
        try:
            self._decoder = codec.Decoder(type=model)
        except TypeError as err:
            raise ConfigError(
                f"{model!r} is neither a pydantic model nor a type msgspec decodes: {err}"
            ) from err
        self._encoder = codec.Encoder()
        self._encode_errors = (msgspec.EncodeError, TypeError, OverflowError)
        self._validation_error = (msgspec.ValidationError, msgspec.DecodeError)

    def dumps(self, obj: Any) -> bytes:
        name = getattr(self.model, "__name__", repr(self.model))
        if self._pydantic:
            if not isinstance(obj, self.model):
                raise SerializationError(f"expected a {name}, got {type(obj).__name__}")
            try:
                text: str = obj.model_dump_json()
            except (ValueError, TypeError) as err:  # pydantic's PydanticSerializationError
                raise SerializationError(f"cannot serialize this {name}: {err}") from err
            return text.encode()
        try:
            data: bytes = self._encoder.encode(obj)
        except self._encode_errors as err:
            raise SerializationError(
                f"cannot encode {type(obj).__name__} as {name} ({self.format}): {err}"
            ) from err
        return data

    def loads(self, data: bytes) -> Any:
        try:
            if self._pydantic:
                return self.model.model_validate_json(data)
            return self._decoder.decode(data)
        except self._validation_error as err:
            raise SerializationError(str(err)) from err

    def __repr__(self) -> str:
        name = getattr(self.model, "__name__", self.model)
        return f"ModelSerializer({name}, format={self.format!r})"


def check_serializer(serializer: Any, what: str) -> Serializer | None:
    """``serializer`` if it has ``dumps`` and ``loads`` (None stays None); ConfigError else."""
    if serializer is None:
        return None
    if isinstance(serializer, type):
        raise ConfigError(f"{what} takes an instance: {serializer.__name__}(), not the class")
    if isinstance(serializer, Serializer):
        return serializer
    raise ConfigError(
        f"{what} must have dumps(obj) -> bytes and loads(bytes) -> object, "
        f"not {type(serializer).__name__}"
    )


class Decoder:
    """A consumer's serializers, applied in place to the records of one fetch (see
    :meth:`__call__`). Built only when a serializer was given: the default consumer runs
    nothing per record."""

    __slots__ = ("key", "value")

    def __init__(self, value: Serializer | None, key: Serializer | None) -> None:
        self.value, self.key = value, key

    def __call__(self, records: list[Record]) -> list[tuple[Record, str]]:
        """Load each record's value (and key); the records that would not, with the error
        text. A tombstone's missing value (and a keyless record's key) stays None."""
        failed: list[tuple[Record, str]] = []
        value = None if self.value is None else self.value.loads
        key = None if self.key is None else self.key.loads
        for r in records:
            try:
                if value is not None and r.value is not None:
                    r.value = value(r.value)
                if key is not None and r.key is not None:
                    r.key = key(r.key)
            except Exception as err:  # a user serializer may raise anything
                failed.append((r, describe(err)))
        return failed


def decoder(value: Any, key: Any) -> Decoder | None:
    """The consumer's decoder for ``value_serializer``/``key_serializer`` (None: neither)."""
    v = check_serializer(value, "value_serializer")
    k = check_serializer(key, "key_serializer")
    return None if v is None and k is None else Decoder(v, k)


class Encoder:
    """A producer's serializers, applied in ``send()`` before anything else is checked: a
    value (key) that does not serialize raises SerializationError there, nothing queued."""

    __slots__ = ("key", "value")

    def __init__(self, value: Serializer | None, key: Serializer | None) -> None:
        self.value, self.key = value, key

    def __call__(self, value: Any, key: Any) -> tuple[Any, Any]:
        """(value bytes, key bytes); None (a tombstone, a keyless record) stays None."""
        if self.value is not None and value is not None:
            value = _dump(self.value, value, "value")
        if self.key is not None and key is not None:
            key = _dump(self.key, key, "key")
        return value, key


def _dump(serializer: Serializer, obj: Any, what: str) -> bytes:
    try:
        data = serializer.dumps(obj)
    except SerializationError:
        raise
    except Exception as err:  # a user serializer may raise anything
        raise SerializationError(
            f"{what} of type {type(obj).__name__} did not serialize with {serializer!r}: "
            f"{describe(err)}"
        ) from err
    if type(data) is not bytes:
        raise SerializationError(
            f"{serializer!r}.dumps returned {type(data).__name__}, not bytes, for the {what}"
        )
    return data


def encoder(value: Any, key: Any) -> Encoder | None:
    """The producer's encoder for ``value_serializer``/``key_serializer`` (None: neither)."""
    v = check_serializer(value, "value_serializer")
    k = check_serializer(key, "key_serializer")
    return None if v is None and k is None else Encoder(v, k)
