"""The curator service.

The management role: jobs, scheduling, reconciliation, rolling updates, draining.
"""
