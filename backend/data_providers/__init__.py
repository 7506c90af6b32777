"""The built-in providers: one package per provider (``csv``, ``binance``, ``polygon``).

Each package's ``__init__`` holds its ``Provider`` subclass (the registry's import path,
e.g. ``backend.data_providers.binance:BinanceProvider``); its other modules are that
provider's insides (parsing, REST client, stream connections, pacing, replay).
May import: ``model``, ``runtime``, ``errors``, ``logs`` only; settings arrive on the
instance (``self.settings``), never from the environment.
"""
