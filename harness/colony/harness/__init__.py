"""Colony's test harness: what the tests and benchmarks start and check, never shipped
with a service.

- `processes`: real nats-server processes and clusters on free ports, consensus voters
  as child processes, sample node metrics, and waiting on a condition with a timeout.
- `replicas`: Raft voters in this process (real pysyncobj replicas over a real
  nats-server), their databases and Raft state at hand.
- `netns`: hosts in Linux network namespaces on two switches joined by a cable, to cut
  apart and heal (root only).
- `netns_voters`: a nats-server and a consensus voter on each namespace host, asked from
  inside the hosts.
- `netns_nodes`: a whole Colony node (supervisor, nats-server, every service, the agent
  and its instances) on each namespace host, asked from inside the hosts.
- `jobs`: a cluster's jobs, instances and nodes read from the management database, and
  the real processes of its instances (found by their environment).
- `probe`: the small programs run inside a namespace host: a voter's status or digest, a
  proposal sent on a signal, a subject's messages, a server's routes, a TCP connect.
- `rollouts`: a job watched while it changes version, drains or turns sick: a client
  loop of its endpoints counting failed requests, the endpoint sets published, its
  instances sampled against a rolling update's invariants.
- `webapp`: the HTTP service those jobs run, whose /health a test turns sick.
- `busy`: keeps one CPU core busy until killed, the load a benchmark puts beside the cluster.
- `promlint`: a check of a Prometheus text exposition, as `promtool check metrics` and
  a little stricter.
- `linearizability`: a Wing-Gong-Lowe checker for histories of register operations.
- `terminal`: a program run in a pseudo-terminal of a fixed size, its screen read back
  (the tests of `colony console`).
"""
