"""The anthropic surface."""
