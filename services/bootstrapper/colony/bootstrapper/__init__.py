"""The bootstrapper: runs each node's supervisor.

The supervisor is the seed of the node agent: it starts the node's
nats-server and services as separate processes, records them, restarts the
ones that die, and stops them all on request. Forming a local cluster is the
CLI's (`colony.cli.local`), which runs this as `python -m colony.bootstrapper`.
"""
