"""Candlewire: a multi-process market-data streaming server.

Importing this package has no side effects: all state is created by
:func:`backend.app.create_app` and the FastAPI lifespan.
"""

__version__ = "0.1.0"
