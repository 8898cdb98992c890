"""The public API is exactly what partitions.__all__ lists (as httpx's test_exported_members):
every public name of the package is in it, and everything in it is importable."""

from __future__ import annotations

import types

import partitions


def test_all_is_sorted_and_unique() -> None:
    assert partitions.__all__ == sorted(set(partitions.__all__))


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(partitions).items()
        if not name.startswith("_")
        # Subpackages (cli, dashboard, bench) appear here once imported; the __future__ flag
        # is not an export either.
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
    assert public == set(partitions.__all__)


def test_every_type_a_public_signature_names_is_exported() -> None:
    # The listener's grants, the group operations' results, the admin's records.
    for name in (
        "Grant",
        "GroupDescription",
        "MemberDescription",
        "PartitionOwner",
        "SeekPlan",
        "SeekStep",
        "GroupLag",
        "LagCheck",
        "PartitionOffset",
        "ReclaimResult",
        "GroupOverview",
        "DeadLetter",
        "ReplayResult",
        "StreamInfo",
        "PartitionInfo",
        "ConflictError",
        "GroupExistsError",
        "SequenceLostError",
    ):
        assert name in partitions.__all__, name
        assert getattr(partitions, name).__module__.startswith("partitions."), name
