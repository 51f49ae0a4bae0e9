"""The admin console at `/admin/`: static pages, the signed session that opens the admin API, and
the console's own endpoints (sign-in, traffic, try it)."""
