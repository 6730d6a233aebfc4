"""The consensus service.

Raft among the voters, the replicated management database and the manager lease.
"""
