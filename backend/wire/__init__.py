"""What the hub hands out: protocol messages, encoded frames and per-client outboxes.

Owns: ``protocol`` (client requests parsed once at the edge, reply builders, the update
encoder), ``frames`` (complete WebSocket text frames built once per update) and ``outbox``
(a client's bounded queue of pending frames with forming-bar conflation).
May import: ``model``, ``errors``. No sockets: ``ws`` writes what ``wire`` builds.
"""
