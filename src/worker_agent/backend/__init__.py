"""Talking to the OPEVA backend: the HTTP client, status delivery through the outbox, heartbeats."""
