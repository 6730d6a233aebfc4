"""How the agent runs instances: one driver per way (process, sim; docker and microvm later)."""
