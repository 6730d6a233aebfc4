"""A local cluster (`colony up` / `colony down`): N nodes on loopback, one state dir.

Forming one is four steps, one module each:

    plan   what to run: node names, voters, ports, each node's config (pure)
    write  the state dir: cluster.toml, each node's config and nats.conf, the secret
    start  each node's supervisor, as `python -m colony.bootstrapper` (and stopping them)
    wait   until the cluster is ready: a JetStream leader, metrics, a Raft leader

`ports` finds which planned ports are taken (and a free layout, for tests).
The CLI only starts the bootstrapper's program: it imports no service.
"""
