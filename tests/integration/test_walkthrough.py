"""The README's main job runs and shows what it claims."""

from __future__ import annotations

from partitions import _walkthrough as walkthrough
from partitions._client.connection import Connection


def test_walkthrough_reports_per_key_order(conn: Connection) -> None:
    lines: list[str] = []
    result = walkthrough.run(conn, lines.append, orders=300)
    assert result == {"produced": 300, "replayed": 300, "ordered": 1, "one_partition": 1}
    assert any("exactly one partition: True" in line for line in lines)
    # a second run applies nothing new and still works
    assert walkthrough.run(conn, lines.append, orders=50)["replayed"] == 50
