"""``partstream acl print``: the least-privilege ACL rules of a producer, consumer, pipeline
(an exactly-once transform), monitor (the metrics exporter) or admin."""

from __future__ import annotations

import os

import click

from partitions._admin.acl import ACL_LIMITS, ROLES, acl_rules, setuser_command
from partitions.cli.common import State, emit, format_option, main, pass_state


@main.group()
def acl() -> None:
    """Least-privilege ACL users for partstream (Redis >= 7.0, Valkey >= 7.2)."""


@acl.command("print")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the user does.")
@click.option("--topic", "topics", multiple=True, help="Topic the user works on (repeatable).")
@click.option(
    "--group", "groups", multiple=True, help="Consumer group (consumer, pipeline; repeatable)."
)
@click.option(
    "--output",
    "outputs",
    multiple=True,
    help="Output topic of a pipeline (repeatable; --topic names its inputs).",
)
@click.option("--user", required=True, help="ACL user name.")
@click.option(
    "--with-password",
    is_flag=True,
    help="Add the password's SHA-256 (#...) to the rules: read from $PARTSTREAM_ACL_PASSWORD, "
    "else prompted. The clear password is never printed.",
)
@click.option(
    "--client-setinfo",
    is_flag=True,
    help="Also allow CLIENT SETINFO (sent by redis-py on connect); Redis >= 7.2 / Valkey only.",
)
@format_option
@pass_state
def acl_print(
    state: State,
    role: str,
    topics: tuple[str, ...],
    groups: tuple[str, ...],
    outputs: tuple[str, ...],
    user: str,
    with_password: bool,
    client_setinfo: bool,
    fmt: str,
) -> None:
    """Print the ACL SETUSER command for a ROLE user (nothing is sent to the server).

    Apply it with ``redis-cli ACL SETUSER ...`` (text output is quoted for a shell), or put
    the JSON argument list in your provisioning. Keys are those of --namespace.
    """
    password = None
    if with_password:
        password = os.environ.get("PARTSTREAM_ACL_PASSWORD") or click.prompt(
            "Password", hide_input=True, confirmation_prompt=True, err=True
        )
    namespace = state.client_config.namespace
    rules = acl_rules(
        role,
        user=user,
        topics=topics,
        groups=groups,
        outputs=outputs,
        namespace=namespace,
        password=password,
        client_setinfo=client_setinfo,
    )
    emit(fmt, rules, lambda r: setuser_command(r))
    click.echo(ACL_LIMITS, err=True)
