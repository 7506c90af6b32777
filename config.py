"""The documented entry to Candlewire's settings: ``from config import load_settings``.

The settings live in :mod:`backend.settings` (part of the package, so an installed Candlewire
does not put a module named ``config`` into site-packages); this file re-exports them for
scripts run from the project folder.
"""

from backend.settings import Settings, load_settings, parse_retention

__all__ = ["Settings", "load_settings", "parse_retention"]
