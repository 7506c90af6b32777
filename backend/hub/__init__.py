"""The hub: who is subscribed to what, and handing each update to each client once.

Owns: ``hub`` (the facade and the state of one hub process), ``clients`` (a client and its
reply jobs), ``requests`` (client requests, applied in order), ``subscriptions`` (the
sans-I/O registry), ``upstream`` (what the providers were told to stream, and the linger),
``fanout`` (live bars to outboxes and listeners), ``listeners`` (in-process consumers of bars
such as the OpenBB live grid), ``upkeep`` (the once-a-second housekeeping), ``handles``
(what the hub needs of the provider processes), ``indicating`` and ``scanning`` (indicators
and scans on the hub's bars) and ``metrics``.
May import: ``model``, ``runtime``, ``wire``, ``history``, ``symbols``, ``indicators``,
``settings``, ``errors``, ``logs``, ``tasks``. Never a socket type: transports (``ws``,
``api``) drive it.
"""
