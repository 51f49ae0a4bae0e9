"""Client dialects: each decodes its requests into a neutral Job and encodes the core's events."""
