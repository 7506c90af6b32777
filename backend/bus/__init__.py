"""The Redis bus: hubs and provider nodes on several processes or machines (DESIGN 6).

Owns: ``names`` (every Redis key and channel, under ``BUS_PREFIX``), ``codec`` (what crosses
Redis, encoded once), ``link`` (the Redis clients, the Lua scripts and the reconnect
backoff), ``hubside`` (:class:`BusProviderSet`: the hub's ``ProviderSet`` over Redis: demand
with a lease, live updates, history requests), ``node`` (:class:`ProviderNode`: the real
supervisor, provider leases and failover, demand-driven streams, history service) and
``datasets`` (``populate.py --from-bus``).
May import: ``model``, ``runtime``, ``settings``, ``symbols``, ``errors``, ``logs``,
``tasks``. Never ``hub``: ``app`` and ``server.py`` choose the bus when ``BUS_URL`` is set.
"""
