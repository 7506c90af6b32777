"""The symbol database: every provider's dataset rows in SQLite, and the symbol search.

Owns the tables of ``schema.sql``; ``index`` holds the row checks, the writer used by
``populate.py`` and the reader (search) used by the hub.
May import: ``model``, ``errors``, ``logs``.
"""
