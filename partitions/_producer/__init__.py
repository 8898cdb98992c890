"""The producer: the public class, its batches and their delivery (routing, retries, the
append function ``append.lua``). Internal: import ``partitions.Producer``.
"""
