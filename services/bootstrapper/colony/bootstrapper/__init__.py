"""The bootstrapper: forms local clusters and runs each node's supervisor.

The supervisor is the seed of the node agent: it starts the node's
nats-server and services as separate processes, records them, restarts the
ones that die, and stops them all on request.
"""
