"""The `colony` command: the operator's front door."""
