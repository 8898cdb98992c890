"""The ``partstream`` command line: a thin click layer over the public API.

Each command parses its options, calls one library function and prints the result (text or
``--format json``). Errors from the library are printed on one line (``error: ...``) and the
command exits with status 1; bad usage exits with status 2 (click's convention).
"""

from __future__ import annotations

from partitions.cli.common import main

# Sub-command modules register themselves on ``main`` when imported.
from partitions.cli import topics as _topics  # noqa: F401  isort: skip
from partitions.cli import produce as _produce  # noqa: F401  isort: skip
from partitions.cli import server as _server  # noqa: F401  isort: skip
from partitions.cli import bench as _bench  # noqa: F401  isort: skip
from partitions.cli import demo as _demo  # noqa: F401  isort: skip
from partitions.cli import dashboard as _dashboard  # noqa: F401  isort: skip
from partitions.cli import consume as _consume  # noqa: F401  isort: skip
from partitions.cli import groups as _groups  # noqa: F401  isort: skip
from partitions.cli import dlq as _dlq  # noqa: F401  isort: skip
from partitions.cli import acl as _acl  # noqa: F401  isort: skip
from partitions.cli import functions as _functions  # noqa: F401  isort: skip
from partitions.cli import metrics as _metrics  # noqa: F401  isort: skip
from partitions.cli import run as _run  # noqa: F401  isort: skip

__all__ = ["main"]
