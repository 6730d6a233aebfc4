"""Colony's shared library: the only code the services have in common.

- `subjects`: every NATS subject, built by one function each and paired with its payload type.
- `messages`: the typed, versioned wire messages and their codec.
- `jobspec`: job specs: what a user asks to run, loaded from YAML with errors that say
  where and why.
- `bus`: a typed wrapper over nats-py (publish, request, subscribe, JetStream) that fails
  only with its own errors.
- `signing`: HMAC signatures, keyed with the cluster secret, on the messages only the
  cluster's own nodes may send.
- `reservations`: what instances hold on their nodes (the scheduler's rule, and the
  reserved cpu/memory `colony status` shows).
- `changes`: following the change stream (replayed from a point, then live), checked.
- `management`: a client of the management database: proposals and reads through any
  voter, retried until a deadline.
- `cluster`: one client for the cluster's questions: voters' statuses, the agreed Raft
  leader, the acting manager, the services running, and waits that say what they last saw.
- `metrics`: the metric families a service hands to its node's monitor, for Prometheus.
- `config`: node configuration from a TOML file and `COLONY_*` environment variables,
  every key validated.
- `logs`: structured logging, one JSON object (or readable text) per line, with context.
- `runner`: what every service does around its own logic: config, logging, connection,
  NATS micro registration, shutdown.
- `natsd`: the embedded nats-server: its binary, its config file, and readiness checks.
- `clock`: the injectable clock, real or a fake that moves only when a test advances it.
- `tasks`: stopping asyncio tasks for sure (Python 3.11 can lose a cancellation).
- `snapshot`: the one snapshot format (the management database behind a header): made,
  checked whole, extracted; the cluster id.
- `statedir`: the on-disk layout of a state directory (node configs, process records, logs).
"""

__version__ = "0.1.0"
