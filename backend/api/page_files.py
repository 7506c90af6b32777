"""The web page's static files (``frontend/`` and the vendored chart library), served so
that a browser asks again for each one at every load.

Starlette's ``StaticFiles`` sends ``ETag`` and ``Last-Modified`` but no ``Cache-Control``,
and browsers then keep a file for a tenth of its age without asking (heuristic freshness,
RFC 9111 4.2.2): the modules of a release deployed 30 days ago for 3 days. After an
upgrade a user ran the old scripts against the new server, a reload included (it asks
again for the page, not for what it loads), or a mix of old and new modules. ``no-cache``
keeps the copies but revalidates them: an unchanged file costs a 304.
"""

from __future__ import annotations

import os

from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.staticfiles import PathLike
from starlette.types import Scope

CACHE_CONTROL = "no-cache"


class PageFiles(StaticFiles):
    """``StaticFiles`` whose file responses say ``Cache-Control: no-cache``."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response
