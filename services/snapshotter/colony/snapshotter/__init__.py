"""The snapshotter service.

Continuous replication of the management database with litestream; backup and restore.
"""
