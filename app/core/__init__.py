"""The provider-neutral core: one conversation model in, one stream of answer events out.

It knows no client wire format and no ASGI: surfaces (`app/surfaces/`) decode their requests into a
`Job` and encode the core's events into their dialect.
"""
