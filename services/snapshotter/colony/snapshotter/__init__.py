"""The snapshotter service.

Continuous replication of each voter's management database with litestream (a
supervised child), the replica manifest, and snapshots fetched from the freshest
replica (to seed a new voter, or to bring a cluster back).
"""
