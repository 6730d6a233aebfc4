"""The monitor: host metrics, node capacity, and their Prometheus endpoint."""
