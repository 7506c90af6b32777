"""Indicators and the scanner (Tradiny's Indicators tab and Filters), independent of the hub.

``base`` (the class a user subclasses), ``talib_functions`` (the built-ins, generated from
TA-Lib's metadata), ``registry`` and ``catalogue`` (ids and search), ``engine`` (values over
bars, the live tail), ``live`` (who holds which indicator; one computation per update),
``messages`` (typed requests and reply builders), ``rules`` (scanner and alert rules, parsed
without ``eval``) and ``scanner`` (a scan over many symbols). The hub wires them to sockets.
May import: ``model``, ``errors``, ``logs``, ``tasks``, ``plugins``.
"""
