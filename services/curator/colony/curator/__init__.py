"""The curator service.

The management role: jobs, scheduling, reconciliation, rolling updates, draining.

- `scheduler`: which node each new instance goes to, or why none fits (pure).
"""
