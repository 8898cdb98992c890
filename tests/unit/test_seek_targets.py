"""The seek target grammar (no server): earliest, latest, an entry id (``ms-seq``, or ``ms``
for ``ms-0``), ``@ms`` or an int meaning a time; anything else is a ConfigError."""

from __future__ import annotations

import pytest

from partitions._admin.offsets import target_id, time_id
from partitions._base.errors import ConfigError


def test_seek_targets() -> None:
    assert target_id("earliest") == "0"
    assert target_id("latest") == "$"
    assert target_id("5-3") == "5-3"
    assert target_id("7") == "7-0"
    assert target_id(1000) == target_id("@1000") == "999-18446744073709551615"
    assert time_id(0) == "0"
    for bad in ("soon", "@x", "1-2-3", "-1"):
        with pytest.raises(ConfigError):
            target_id(bad)
    with pytest.raises(ConfigError):
        target_id(True)
