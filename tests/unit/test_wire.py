"""The wire writer's fast path: replies already in the hiredis buffer are taken straight from
it (``take_buffered``) and mean exactly what ``read_response`` would have returned."""

from __future__ import annotations

import hiredis
import pytest
import redis.exceptions as rex
from redis._parsers.hiredis import NOT_ENOUGH_DATA

from partitions._client import wire


def reader() -> hiredis.Reader:
    # The arguments redis-py's hiredis parsers give their reader (on_connect).
    return hiredis.Reader(
        protocolError=rex.InvalidResponse,
        replyError=rex.ResponseError,
        notEnoughData=NOT_ENOUGH_DATA,
    )


def test_takes_complete_replies_and_leaves_a_partial_one_in_the_buffer() -> None:
    r = reader()
    r.feed(b"+OK\r\n:7\r\n$3\r\nabc\r\n_\r\n*2\r\n$1\r\nx\r\n$2\r\nyz\r\n$5\r\nhel")
    replies = wire.Replies(6)
    assert wire.take_buffered(r, replies) is None
    assert replies.out == [b"OK", 7, b"abc", None, [b"x", b"yz"]]
    assert replies.wanted()
    r.feed(b"lo\r\n")
    assert wire.take_buffered(r, replies) is None
    assert replies.out[-1] == b"hello" and not replies.wanted()


def test_stops_at_the_expected_count() -> None:
    r = reader()
    r.feed(b":1\r\n:2\r\n:3\r\n")
    replies = wire.Replies(2)
    wire.take_buffered(r, replies)
    assert replies.out == [1, 2]
    assert r.gets() == 3  # the next exchange's reply stays for it


def test_an_error_reply_stays_in_place_and_false_is_a_reply() -> None:
    r = reader()
    r.feed(b"-WRONGTYPE Operation against a key\r\n#f\r\n:1\r\n")
    replies = wire.Replies(3)
    wire.take_buffered(r, replies)
    err, false, one = replies.out
    assert isinstance(err, rex.ResponseError) and "WRONGTYPE" in str(err)
    assert false is False and one == 1  # RESP3 false is a reply, not "not enough data"


def test_a_push_message_is_handed_back_not_counted_as_a_reply() -> None:
    r = reader()
    r.feed(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n:5\r\n")
    replies = wire.Replies(1)
    push = wire.take_buffered(r, replies)
    assert isinstance(push, hiredis.PushNotification) and replies.out == []
    assert wire.take_buffered(r, replies) is None and replies.out == [5]


def test_a_connection_error_raises() -> None:
    class Reader:
        def gets(self) -> object:
            return rex.ConnectionError("gone")

    with pytest.raises(rex.ConnectionError):
        wire.take_buffered(Reader(), wire.Replies(1))
