"""Which file ``DB`` names now. A server's connections keep the file they opened: one
deleted or replaced while the server runs (a backup copied in, a new database moved there)
is told by its device and inode, before the server writes through the journal ``DB-wal``,
which SQLite finds by name (the bar store and the alert store check it)."""

from __future__ import annotations

import os
from pathlib import Path

FileId = tuple[int, int]


def file_id(path: Path) -> FileId | None:
    """Which file ``path`` names now (device, inode); None when there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino)
