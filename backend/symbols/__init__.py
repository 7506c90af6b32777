"""The symbol database: every provider's dataset rows in SQLite, and the symbol search.

Owns the tables of ``schema.sql``; ``rows`` holds the row checks, ``writer`` the writer used
by ``populate.py`` (its batches in ``batches``, its SQL in ``session``) and ``index`` the
reader (search) used by the hub.
May import: ``model``, ``errors``, ``logs``.
"""
