"""A short guided tour on a live server: topic, keyed produce, per-key order, replay by time.

``partstream walkthrough`` runs it (on the embedded Valkey unless ``--url`` is given) in its
own namespace, so it never touches other data. Everything goes through the public API.
"""

from __future__ import annotations

import random
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable
from importlib import resources

from partitions._admin import apply as apply_mod
from partitions._admin.replay import replay
from partitions._admin.topics import TopicAdmin
from partitions._client.connection import Connection
from partitions._producer.producer import Producer

# Package data (config/demo.toml in the source tree links to it), so an installed wheel
# applies the same declaration as a checkout.
DEMO_CONFIG = "demo.toml"

TENANTS = [f"tenant-{i:02d}" for i in range(24)]
TYPES = ["created", "paid", "packed", "shipped", "delivered"]


def demo_declared() -> apply_mod.Declared:
    """The demo's topics and groups (partitions/demo.toml, shipped with the package)."""
    text = resources.files("partitions").joinpath(DEMO_CONFIG).read_text()
    return apply_mod.parse(tomllib.loads(text), DEMO_CONFIG)


def run(conn: Connection, echo: Callable[[str], None] = print, orders: int = 400) -> dict[str, int]:
    """Run the tour; returns a few figures (for tests)."""
    echo(f"1. Server: {conn.server.describe()} at {conn.redacted_url}")
    actions = apply_mod.execute(conn, demo_declared())
    echo("2. Applied config/demo.toml: " + "; ".join(str(a) for a in actions))
    meta = TopicAdmin(conn).get("orders")
    regions = ", ".join(f"{k}={v[0]}-{v[1]}" for k, v in meta.spec.regions.items())
    echo(f"   topic orders: {meta.partitions} partitions, regions {regions}")

    rng = random.Random(7)
    start_ms = int(time.time() * 1000)
    placed: dict[str, set[int]] = defaultdict(set)
    steps: dict[str, int] = Counter()
    with Producer(conn) as producer:
        futures = []
        for i in range(orders):
            tenant = rng.choice(TENANTS)
            region = "eu" if int(tenant[-2:]) % 2 == 0 else "us"
            step = steps[tenant]
            steps[tenant] += 1
            event = {
                "tenant": tenant,
                "region": region,
                "step": step,
                "type": TYPES[step % 5],
                "n": i,
            }
            futures.append((tenant, producer.send("orders", event, key=tenant, region=region)))
        producer.flush()
        for tenant, fut in futures:
            placed[tenant].add(fut.result().partition)
    echo(f"3. Produced {orders} order events for {len(placed)} tenants, keyed by tenant, by region")
    one_partition = all(len(p) == 1 for p in placed.values())
    echo(f"   every tenant's events went to exactly one partition: {one_partition}")

    desc = TopicAdmin(conn).describe("orders")
    echo("4. Partitions (length, last id):")
    for p in desc.partitions:
        echo(f"   {p.partition}: {p.length:>7} {p.last_id or '-'}")

    seen: dict[str, list[int]] = defaultdict(list)
    count = 0
    for record in replay(conn, "orders", start=f"@{start_ms}"):
        event = record.json()
        seen[event["tenant"]].append(event["step"])
        count += 1
    in_order = all(steps == sorted(steps) for steps in seen.values())
    echo(f"5. Replayed {count} events from @{start_ms} (time-based seek), whole topic merged by id")
    echo(f"   each tenant's steps came back in the order they were sent: {in_order}")
    sample = sorted(seen)[0]
    echo(f"   e.g. {sample}: steps {seen[sample][:12]}{' ...' if len(seen[sample]) > 12 else ''}")
    echo("Next: `partstream topic describe orders`, `partstream replay orders -n 5 --format json`")
    return {
        "produced": orders,
        "replayed": count,
        "ordered": int(in_order),
        "one_partition": int(one_partition),
    }
