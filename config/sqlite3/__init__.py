"""SQLite backend whose writers queue on a file lock (see base.py)."""
