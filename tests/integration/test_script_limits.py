"""Script inputs stay bounded at the sizes the config classes accept: a target CAS over more
members than Lua's stack holds as arguments of one command (~8,000) goes through."""

from __future__ import annotations

import pytest

from partitions._admin.groups import GroupAdmin
from partitions._base.functions import Functions
from partitions._client.connection import Connection

pytestmark = pytest.mark.integration


def test_target_of_thousands_of_members_is_stored(conn: Connection) -> None:
    GroupAdmin(conn).create("g")
    keys = conn.keys.group_keys("g")
    members, state, target = keys[2], keys[1], keys[4]
    n = 4_100  # 8,200 hash values: one HSET of all of them would pass the stack limit
    conn.client.hset(members, mapping={f"m{i}": '{"i":"","t":"t","e":1,"o":""}' for i in range(n)})
    epoch = conn.client.hincrby(state, "epoch", 1)
    args = ["assign", epoch]
    for i in range(n):
        args += [f"m{i}", f"t:{i}"]
    reply = Functions(conn.client).call("admin", keys, args)
    assert reply[0] == b"OK"
    assert conn.client.hlen(target) == n
    assert conn.client.hget(target, f"m{n - 1}") == f"t:{n - 1}".encode()
