"""Shared HTTP plumbing for every surface: dependencies, body limit, SSE, error envelopes."""
