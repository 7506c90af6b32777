"""Start Candlewire: the provider processes and the FastAPI WebSocket hub (uvicorn).

    python server.py [--host HOST] [--port PORT] [--ssl-certfile CERT --ssl-keyfile KEY]
                     [--role all|hub|providers] [--workers N]

``--port 0`` picks a free port; the URL actually listened on is printed either way.
SIGINT/SIGTERM stop the hub and every provider process cleanly. ``--role`` (README,
"Scale-out"): ``all`` (default) is the hub with its providers; with ``BUS_URL`` set,
``hub`` is a hub reaching provider nodes over Redis and ``providers`` a provider node
(``/health`` and ``/metrics`` only). ``--workers N`` (``--role hub``) runs N hub processes
on one port (``SO_REUSEPORT``).

The command only: what it runs is :mod:`backend.serving` (whose names this module gives
too, ``server.GcPauses``), imported when run or asked for. Every provider process is started
with ``spawn``, which imports this file in it: kept empty, it costs them nothing.
"""

from __future__ import annotations

import sys
from typing import Any


def __getattr__(name: str) -> Any:
    """``server.<name>``: the name of :mod:`backend.serving`."""
    from backend import serving

    return getattr(serving, name)


if __name__ == "__main__":
    from backend.serving import run

    sys.exit(run())
