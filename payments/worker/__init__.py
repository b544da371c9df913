"""The worker runtime: db_worker, wake-up, periodic threads, recovery, heartbeat."""
