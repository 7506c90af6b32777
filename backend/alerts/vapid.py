"""The server's VAPID key pair: created once on first start, stored as PEM, never rotated.

Browsers keep their push subscriptions across visits; a new key would make every push to
them fail, so the PEM file is the one source of the key (next to the ``DB`` file). It is a
secret: a file that others may read (copied, unpacked, checked out) is narrowed to 0600 when
loaded, with a warning.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from backend.errors import ConfigError

KEY_FILE = "vapid_private_key.pem"

logger = logging.getLogger(__name__)


class VapidKeys:
    """The P-256 key pair that signs pushes (RFC 8292)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        self.private_key = private_key
        self.path = path

    @classmethod
    def load_or_create(cls, folder: Path) -> VapidKeys:
        """The stored pair in ``folder``, or a new one stored there (mode 0600)."""
        path = folder / KEY_FILE
        if path.exists():
            _narrow(path)
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except ValueError as exc:
                raise ConfigError(f"{path}: not a PEM private key ({exc})") from None
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"{path}: not an EC private key")
            return cls(key, path)
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Written whole under a name of its own (mkstemp: mode 0600), then linked into place,
        # which fails if the file exists: hub workers starting together (server.py
        # --workers N) never read a half-written file, and the first one's key is everybody's.
        fd, staged = tempfile.mkstemp(dir=folder, prefix=f".{KEY_FILE}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
            os.link(staged, path)
        except FileExistsError:
            return cls.load_or_create(folder)
        finally:
            os.unlink(staged)
        return cls(key, path)

    def public_key(self) -> str:
        """Base64url of the 65-byte uncompressed point, with padding (as Tradiny sends)."""
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return base64.urlsafe_b64encode(point).decode()


def _narrow(path: Path) -> None:
    """Make the key file readable by its owner alone (a warning when it was not)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(0o600)
        except OSError as exc:
            logger.warning(
                "%s is readable by others (mode %o) and cannot be narrowed: %s", path, mode, exc
            )
            return
        logger.warning("%s was readable by others (mode %o): narrowed to 0600", path, mode)
