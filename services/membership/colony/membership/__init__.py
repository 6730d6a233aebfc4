"""The membership service.

SWIM-style gossip over NATS: who is alive, suspect, dead or left, with node metadata.
"""
