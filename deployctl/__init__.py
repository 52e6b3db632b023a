"""deployctl: blue-green releases and rollbacks that lose no user action."""
