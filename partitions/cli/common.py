"""Shared pieces of the CLI: the root group, the lazy connection and output helpers."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
import orjson

from partitions._base.errors import PartstreamError
from partitions._client.config import ClientConfig
from partitions._client.connection import Connection, connect


class State:
    """Per-invocation state: the client config and a connection opened on first use."""

    def __init__(self, url: str | None, namespace: str | None) -> None:
        self.url = url
        self.namespace = namespace
        self.config_file: str | None = None
        self._conn: Connection | None = None

    def use_config_file(self, path: str | None) -> None:
        """A command's ``--config FILE``: its ``[client]`` table (url, namespace, ...) applies
        under the flags and the environment. Call before the first use of :attr:`conn`."""
        if path is not None:
            if self._conn is not None:
                raise RuntimeError("use_config_file() after the connection was opened")
            self.config_file = path

    @property
    def client_config(self) -> ClientConfig:
        if self.config_file is not None:
            return ClientConfig.from_toml(self.config_file, url=self.url, namespace=self.namespace)
        return ClientConfig.from_env(url=self.url, namespace=self.namespace)

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            self._conn = connect(self.client_config)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PartstreamGroup(click.Group):
    """Turns library errors into one clear line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PartstreamError as err:
            click.echo(f"error: {type(err).__name__}: {err}", err=True)
            sys.exit(1)


@click.group(cls=PartstreamGroup)
@click.option(
    "--url",
    envvar="PARTSTREAM_URL",
    help="Server URL (redis://, rediss://, unix://, redis+cluster://, "
    "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER). "
    "Default: the embedded Valkey server.",
)
@click.option("--namespace", envvar="PARTSTREAM_NAMESPACE", help="Key namespace (default: ps).")
@click.version_option(package_name="partstream")
@click.pass_context
def main(ctx: click.Context, url: str | None, namespace: str | None) -> None:
    """partstream: Kafka-style partitioned streaming on Redis Streams."""
    state = State(url, namespace)
    ctx.obj = state
    ctx.call_on_close(state.close)


pass_state = click.make_pass_decorator(State)

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)


def emit(fmt: str, data: Any, text: Callable[[Any], str] | None = None) -> None:
    """Print ``data`` as JSON, or through ``text`` in text mode."""
    if fmt == "json":
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(text(data) if text else str(data))


def json_line(data: Any) -> None:
    """One compact JSON object per line, flushed (for streams of records)."""
    sys.stdout.write(orjson.dumps(data).decode() + "\n")
    sys.stdout.flush()
