"""A stateful model of the group protocol against the real server (hypothesis).

Members join, leave, heartbeat (handing back what they were asked to revoke, or holding on to
it for a while), and the group settles. After every step, checked against the server's own
description of the group:

* one owner: no partition is owned by two members, and a partition is only ever granted to
  a member after its previous owner released it (no member's owned set overlaps another's);
* grants only move forward: a partition's grant token never decreases;
* epochs never go back (group epoch, member epochs);
* when membership stops changing and members keep heartbeating, the group becomes stable
  with every partition owned and counts balanced within one (the uniform assignor).
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from coordinator.member import Member
from partitions._admin.groups import GroupAdmin
from partitions._base.settings import GroupSettings
from partitions._base.types import TopicPartition
from partitions._client.config import ClientConfig
from partitions._client.connection import Connection, connect

TOPICS = {"events": 7, "audit": 3}
PARTITIONS = sum(TOPICS.values())
# A long session: members only leave by the model's own steps, never by expiry mid-test.
SETTINGS = GroupSettings(session_timeout_ms=60_000, heartbeat_interval_ms=1_000)


@pytest.fixture
def model_conn(client_config: ClientConfig) -> Connection:
    return connect(client_config)


class GroupModel(RuleBasedStateMachine):
    conn: Connection

    members = Bundle("members")

    def __init__(self) -> None:
        super().__init__()
        self.group = "g" + uuid.uuid4().hex[:8]
        self.live: dict[str, Member] = {}
        self.tokens: dict[TopicPartition, int] = {}
        self.group_epoch = 0
        self.member_epochs: dict[str, int] = {}

    # -- steps ------------------------------------------------------------------------------
    @rule(target=members)
    def join(self) -> str:
        m = Member(self.conn.client, self.conn.keys, self.group, TOPICS, settings=SETTINGS)
        m.join()
        self.live[m.member_id] = m
        return m.member_id

    @rule(member=members, release=st.booleans())
    def heartbeat(self, member: str, release: bool) -> None:
        m = self.live.get(member)
        if m is None:
            return
        last = m.last
        revoke = set(last.to_revoke) if (last is not None and release) else set()
        result = m.heartbeat(revoke)
        assert result.member_epoch >= self.member_epochs.get(member, 0)
        self.member_epochs[member] = result.member_epoch

    @rule(member=consumes(members))
    def leave(self, member: str) -> None:
        m = self.live.pop(member, None)
        if m is not None:
            m.leave()

    @precondition(lambda self: bool(self.live))
    @rule()
    def settle(self) -> None:
        """Everyone heartbeats, releasing what it is asked to, until the group is stable."""
        admin = GroupAdmin(self.conn)
        for _ in range(40):
            for m in list(self.live.values()):
                last = m.last
                m.heartbeat(set(last.to_revoke) if last is not None else set())
            d = admin.describe(self.group)
            if d.state == "stable":
                break
        d = admin.describe(self.group)
        assert d.state == "stable", d.to_dict()
        counts = [len(m.owned) for m in d.members]
        assert sum(counts) == PARTITIONS
        assert max(counts) - min(counts) <= 1, counts

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def one_owner_and_monotone(self) -> None:
        if not self.live:
            return
        d = GroupAdmin(self.conn).describe(self.group)
        assert d.epoch >= self.group_epoch
        self.group_epoch = d.epoch
        seen: dict[TopicPartition, str] = {}
        for m in d.members:
            for tp in m.owned:
                tp = TopicPartition(*tp)
                assert tp not in seen, f"{tp} owned by {seen[tp]} and {m.member_id}"
                seen[tp] = m.member_id
        for p in d.partitions:
            if p.owner is None:
                continue
            tp = TopicPartition(p.topic, p.partition)
            assert p.token >= self.tokens.get(tp, 0), f"grant token of {tp} went back"
            self.tokens[tp] = p.token

    def teardown(self) -> None:
        for m in self.live.values():
            m.leave()
        GroupAdmin(self.conn).delete(self.group, force=True)


@pytest.mark.timeout(240)
def test_group_protocol_model(model_conn: Connection) -> None:
    GroupModel.conn = model_conn
    config = settings(
        max_examples=25,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    try:
        run_state_machine_as_test(GroupModel, settings=config)
    finally:
        model_conn.close()
