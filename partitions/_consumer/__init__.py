"""The consumer: the public class, its rebalance handling and its fetcher (the consume function
``consume.lua``). Internal: import ``partitions.Consumer``.
"""
