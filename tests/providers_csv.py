"""A test provider built on the CSV provider, apart from ``tests.providers``: importing the
CSV provider brings pandas (half a second), which every counting provider process of the
suite would pay otherwise."""

from __future__ import annotations

import os
import time

from backend.data_providers.csv import CSVProvider


class SlowStartCSVProvider(CSVProvider):
    """The CSV provider, ready only ``CANDLEWIRE_TEST_INIT_DELAY`` seconds after its process
    starts: a request sent while the server starts arrives before its replay clocks are
    known to the hub (a page reconnecting to a restarted server)."""

    def init(self) -> None:
        time.sleep(float(os.environ.get("CANDLEWIRE_TEST_INIT_DELAY", "0")))
        super().init()
