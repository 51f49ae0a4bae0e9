"""Shared state: the pool, limits, client keys and stored responses, kept in this process (the
embedded backend) or in Redis (`REDIS_URL`) for several replicas. `backend.build_state` picks one."""
