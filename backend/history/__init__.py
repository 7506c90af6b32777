"""History: bars in memory, bars on disk, and the planner that fills the gaps.

Owns: ``cache`` (bars per series with their coverage, bounded), ``store`` (the SQLite bar
store, ``bars.sql``) and ``planner`` (answers a history request from the cache, the store or
one provider call shared by identical concurrent requests).
May import: ``model``, ``runtime`` (provider clocks), ``errors``, ``logs``.
"""
