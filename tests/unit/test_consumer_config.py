"""ConsumerConfig's checks (no server): out-of-range fields, and a fetch block that must stay
below the client's socket timeout."""

from __future__ import annotations

import pytest

from partitions._base.errors import ConfigError
from partitions._client.config import ClientConfig, ConsumerConfig


def test_consumer_config_checks() -> None:
    ConsumerConfig()
    with pytest.raises(ConfigError):
        ConsumerConfig(fetch_count=0)
    with pytest.raises(ConfigError):
        ConsumerConfig(auto_offset_reset="middle")
    with pytest.raises(ConfigError):
        ConsumerConfig(fetch_count=10_001)
    with pytest.raises(ConfigError, match="socket timeout"):
        ConsumerConfig(block_ms=6000).check_against(ClientConfig(socket_timeout=10))
    ConsumerConfig(block_ms=4000).check_against(ClientConfig(socket_timeout=10))
