"""The HTTP surfaces: our REST endpoints, the TradingView UDF datafeed and OpenBB Workspace.

Owns: ``rest`` (``/health``, ``/metrics``, ``/api/...``), ``udf`` (``/udf/...``),
``udf_quotes`` (``/udf/quotes``), ``openbb``
(the Workspace endpoints), ``openbb_widgets`` (what ``/widgets.json`` and ``/apps.json``
say), ``openbb_grid`` (the live grid's rows and socket), ``cors`` (the app's CORS policy),
``head`` (HEAD on every GET route) and ``compression`` (gzip of large answers).
May import: ``hub``, ``ws`` (shared frame parsing), ``access``, ``history``, ``symbols``,
``wire``, ``model``, ``runtime``, ``settings``, ``errors``, ``logs``.
"""
