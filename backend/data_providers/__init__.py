"""The built-in providers: one module per provider (csv, binance, polygon)."""
