"""The bootstrapper: each node's supervisor and its node agent.

The supervisor starts the node's nats-server and services as separate processes,
records them, restarts the ones that die, and stops them all on request. Forming a
local cluster is the CLI's (`colony.cli.local`), which runs it as
`python -m colony.bootstrapper`.

The node agent (`colony.bootstrapper.agent`, one of the services the supervisor runs)
registers its node, runs the instances the manager places on it through a driver
(`agent.drivers`: process, sim), restarts them by their job's restart policy, reports
every transition, serves their output, and adopts what still runs after it restarts.
"""
