"""Durable local state in WORKER_STATE_DIR: job records and the status outbox, kept across restarts."""
