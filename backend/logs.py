"""Logging setup, once per process (the hub and every provider process)."""

from __future__ import annotations

import logging
import sys


def configure(level: str, process_name: str = "hub") -> None:
    """Log to stderr with time, level, process and logger name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-7s [{process_name}] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
