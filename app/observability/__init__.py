"""What the gateway tells its operator: per-request context, Prometheus metrics, and the access log.

The chat core reports what only it knows (model, credential, first byte, upstream outcome) through
the `note_*` functions of `context`; the access middleware turns each request into one log line and
its metrics.
"""
