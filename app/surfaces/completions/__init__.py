"""The completions surface."""
