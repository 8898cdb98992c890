"""Exactly-once consume -> transform -> produce (see :mod:`partitions._pipeline.pipeline`)."""
