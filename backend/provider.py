"""Compatibility: ``from backend.provider import Provider`` keeps working.

The base class lives in :mod:`backend.runtime.provider`; providers written before the
package layout (and the seed's how-to) import it from here.
"""

from backend.runtime.provider import Datapoint, Provider, StreamKey

__all__ = ["Datapoint", "Provider", "StreamKey"]
