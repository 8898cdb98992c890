"""The base layer both planes stand on: the error tree, the key table, partition types, the
Functions library and its loader, durability (``WAIT``/``WAITAOF``), partition fences and the
record codec. Imports nothing else of partstream. Internal: the public API is ``partitions``.
"""
