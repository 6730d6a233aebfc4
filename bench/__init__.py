"""Colony's benchmarks: `python -m bench [names...]` (or `task bench`) runs them and
rewrites docs/benchmarks.md. Each public module here is one benchmark; see __main__."""
