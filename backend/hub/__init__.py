"""The hub: who is subscribed to what, and handing each update to each client once.

Owns: ``hub`` (requests, fan-out, store writes), ``subscriptions`` (the sans-I/O registry),
``listeners`` (in-process consumers of bars such as the OpenBB live grid) and ``metrics``.
May import: ``model``, ``runtime``, ``wire``, ``history``, ``symbols``, ``settings``,
``errors``, ``logs``. Never a socket type: transports (``ws``, ``api``) drive it.
"""
