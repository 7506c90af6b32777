"""The HTTP surfaces: our REST endpoints, the TradingView UDF datafeed and OpenBB Workspace.

Owns: ``rest`` (``/health``, ``/metrics``, ``/api/...``), ``udf`` (``/udf/...``), ``openbb``
(``/widgets.json``, ``/apps.json``, the live grid) and ``cors`` (the app's CORS policy).
May import: ``hub``, ``ws`` (shared frame parsing), ``history``, ``symbols``, ``wire``,
``model``, ``runtime``, ``settings``, ``errors``, ``logs``.
"""
