"""Colony's test harness: what the tests and benchmarks start and check, never shipped
with a service.

- `processes`: real nats-server processes and clusters on free ports, consensus voters
  as child processes, and waiting on a condition with a timeout.
- `netns`: hosts in network namespaces joined by virtual cables (root only).
- `netns_voters`: a consensus voter on each namespace host, with probes run inside them.
- `linearizability`: a Wing-Gong-Lowe checker for histories of register operations.
"""
