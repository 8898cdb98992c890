"""Reaching a server: client settings, connections (single node, Sentinel, Cluster), URLs, the
embedded server and local replica sets / clusters, per-node routing. Internal.
"""
