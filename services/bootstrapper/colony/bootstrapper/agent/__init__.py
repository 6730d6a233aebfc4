"""The node agent: makes its node run the instances the manager placed on it."""
