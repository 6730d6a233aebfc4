"""Colony's shared library: the only code the services have in common.

- `subjects`: every NATS subject, built by one function each and paired with its payload type.
- `messages`: the typed, versioned wire structs and their codec.
- `bus`: a typed wrapper over nats-py (publish, request, subscribe, JetStream helpers).
- `config`: node configuration from a TOML file and `COLONY_*` environment variables.
- `runner`: runs a service: config, logging, connection, NATS micro registration, shutdown.
- `clock`: the injectable clock.
- `statedir`: the on-disk layout of a node's state directory.
"""

__version__ = "0.1.0"
