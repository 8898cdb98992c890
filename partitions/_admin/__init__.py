"""Administration of the data: topics, group offsets (seek, lag), replay, dead letters, ``apply``
of TOML declarations, ACL rules and the Functions library status. Internal.
"""
