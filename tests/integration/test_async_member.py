"""AsyncMember on redis.asyncio: the same group protocol as Member, against a real server
(the two shells interoperate in one group)."""

from __future__ import annotations

import anyio
import pytest

from coordinator.aio import AsyncMember, fence_async
from coordinator.member import Member
from partitions import AsyncConnection
from partitions._base.errors import UnknownMemberError
from partitions._base.fence import read_fence
from partitions._base.keys import TopicLayout
from partitions._base.settings import GroupSettings
from partitions._client.connection import Connection

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]
FAST = GroupSettings(heartbeat_interval_ms=100, session_timeout_ms=1500)


async def test_an_async_and_a_sync_member_share_a_group(
    aconn: AsyncConnection, conn: Connection
) -> None:
    first = AsyncMember(aconn.client, aconn.keys, "g", {"t": 4}, settings=FAST)
    joined = await first.join()
    assert joined.created_group and len(joined.owned) == 4
    second = Member(conn.client, conn.keys, "g", {"t": 4}, settings=FAST)
    second.join()
    # The first must hand back half: revoked before anyone else is granted them (once the
    # target is computed: a tenth of an interval after the join, the members' debounce).
    await anyio.sleep(FAST.heartbeat_interval_ms / 10 / 1000 + 0.01)
    beat = await first.heartbeat()
    assert len(beat.to_revoke) == 2
    assert not second.heartbeat().owned  # nothing granted while first still owns them
    await first.heartbeat(beat.to_revoke)
    assert set(second.heartbeat().owned) == set(beat.to_revoke)
    assert conn.client.sismember(conn.keys.groups, "g")
    await first.leave()
    assert not first.joined
    assert len(second.heartbeat().owned) == 4


async def test_an_evicted_member_is_told_and_drops_its_session(
    aconn: AsyncConnection, conn: Connection
) -> None:
    member = AsyncMember(aconn.client, aconn.keys, "g", {"t": 1}, settings=FAST)
    await member.join()
    # Another handle of the same member leaves for it: the server no longer knows it.
    Member(conn.client, conn.keys, "g", {"t": 1}, member_id=member.member_id).leave()
    with pytest.raises(UnknownMemberError, match="rejoin"):
        await member.heartbeat()
    assert not member.joined and member.last is None


async def test_fences_are_claimed_and_released_by_grant(
    aconn: AsyncConnection, conn: Connection
) -> None:
    lay = TopicLayout("t", 1)  # no metadata: the original tags
    f = aconn.functions
    assert await fence_async(f, "claim", aconn.keys, "g", lay, 0, "m1", 5)
    assert not await fence_async(f, "claim", aconn.keys, "g", lay, 0, "m2", 4)  # older grant
    assert read_fence(conn.client, conn.keys, "g", lay, 0) == ("m1", 5)
    assert not await fence_async(f, "release", aconn.keys, "g", lay, 0, "m2", 4)
    assert await fence_async(f, "release", aconn.keys, "g", lay, 0, "m1", 5)
    assert read_fence(conn.client, conn.keys, "g", lay, 0) is None
