"""The ``indicator_update`` frames of the hub, byte for byte those of
``text_frame(protocol.encode(messages.indicator_update(...)))``, from parts encoded once.

Everything in an update's message but the date, the values and ``last_dates`` is the same
for every update of a chart id, so each chart id's message is kept as a template with a
``%b`` per part that changes (:func:`chart_template`). :class:`GroupFrames` goes one step
further for a group of chart ids held by the same clients (the usual case: one chart's
indicators over one key): one template for the frames of all of them back to back, each
row's values encoded in one call (whose length gives the frame's), so that an update of the
group costs one formatting, and one encoding and one length per frame, not a message per
chart id per client. For the usual update of a group whose computations all run over the
one series it reads, :meth:`GroupFrames.usual` peeks at the forming bar and formats in the
same loop, with no row in between (the hub's most frequent path; the same bytes).
:class:`Encoded` keeps what every frame shares encoded once: the chart templates, the bar
dates and each series' ``last_dates``.

Not: which clients get the frames and how (``indicating``), the values (``backend.indicators``).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from backend.history.cache import BarCache
from backend.indicators.incremental import Incremental
from backend.indicators.live import Group, IndicatorUpdate, Shared
from backend.model import intervals
from backend.model.bars import Bar, SeriesId
from backend.wire.frames import text_frame

dumps = orjson.dumps

LEN_16, LEN_64 = 126, 1 << 16  # payload sizes with a 16-bit length in the frame header
MAX_ENCODED = 10_000  # chart templates and dates kept encoded (all dropped past that)


def chart_template(chart_id: str, names: tuple[str, ...]) -> bytes:
    """The message of an update of ``chart_id`` (whose row has the keys ``names``: "date",
    then one per output) with a ``%b`` for the date, each value and ``last_dates``."""
    keys = [orjson.dumps(name).replace(b"%", b"%%") for name in (chart_id, *names)]
    data = b",".join(b"%b:%%b" % key for key in keys[1:])
    message = b'{"type":"indicator_update","id":%b,"data":{%b},"annotations":null,' % (
        keys[0],
        data,
    )
    return message + b'"last_dates":%b}'


def frame_of(payload: bytes) -> bytes:
    """The text frame of ``payload`` (:func:`~backend.wire.frames.text_frame`), the usual
    size without a call."""
    n = len(payload)
    if LEN_16 <= n < LEN_64:
        return b"\x81\x7e%b%b" % (n.to_bytes(2, "big"), payload)
    return text_frame(payload)


class GroupFrames:
    """The frames of one :data:`~backend.indicators.live.Group` of chart ids, all of one bar
    and reading the same series: one ``bytes`` of them back to back, in the group's order."""

    __slots__ = (
        "chart_ids",
        "count",
        "group",
        "layout",
        "reads",
        "running",
        "shared",
        "template",
    )

    def __init__(self, group: Group) -> None:
        self.group = group  # what it was made for (the hub makes another for another group)
        self.shared: tuple[Shared, ...] = tuple(shared for shared, _, _ in group)
        self.count = len(group)  # frames
        self.chart_ids = "\n".join(chart_id for _, chart_id, _ in group)
        reads = {shared.computation.bound.series for shared in self.shared}
        # the series every chart id reads, when they all read the same: ``last_dates``
        self.reads: tuple[SeriesId, ...] | None = reads.pop() if len(reads) == 1 else None
        # each chart id's running computation, when all run over the one series read
        self.running: tuple[Incremental, ...] | None = None
        incrementals = [shared.computation.incremental for shared in self.shared]
        if (
            self.reads is not None
            and len(self.reads) == 1
            and all(shared.computation.running == self.reads[0] for shared in self.shared)
            and all(incremental is not None for incremental in incrementals)
        ):
            self.running = tuple(i for i in incrementals if i is not None)
        layout = []
        templates = []
        for _, chart_id, chart in group:
            template = chart_template(chart_id, chart.names)
            values = len(chart.names) - 1
            fixed = len(template % ((b"",) * (values + 2)))  # the message without its parts
            # less the brackets and commas of the values encoded as a list (``frames``)
            layout.append((fixed - 2 - max(values - 1, 0), values))
            templates.append(b"\x81\x7e%b" + template)  # a 16-bit length (checked per frame)
        self.layout: tuple[tuple[int, int], ...] = tuple(layout)
        self.template = b"".join(templates)

    def frames(
        self, date_of: Callable[[int], bytes], last_dates: bytes
    ) -> tuple[int, bytes] | None:
        """The bar time of the rows the group's computations hold now, and their frames
        (``date_of(time)``: the date encoded); ``None`` when they cannot be made this way:
        a computation with no row or two (failed; a bar that closed in the batch), rows of
        different bars, or a frame whose length does not take 16 bits. Each row is encoded
        in one call, whose length gives the frame's."""
        time = None
        date = b""
        extra = 0
        parts: list[bytes] = []
        for shared, (fixed, count) in zip(self.shared, self.layout, strict=True):
            rows = shared.rows
            if len(rows) != 1:
                return None
            row_time, row = rows[0]
            if row_time != time:
                if time is not None:
                    return None
                time = row_time
                date = date_of(time)
                extra = len(date) + len(last_dates)
            if len(row) != count:
                return None
            encoded = dumps(row)  # b"[v,v,...]": the values, a comma between two
            n = fixed + extra + len(encoded)
            if not LEN_16 <= n < LEN_64:
                return None
            parts += (n.to_bytes(2, "big"), date)
            if count == 1:
                parts.append(encoded[1:-1])
            elif count:
                values = encoded[1:-1].split(b",")  # no comma in a number
                if len(values) != count:
                    return None
                parts += values
            parts.append(last_dates)
        if time is None:
            return None
        return time, self.template % tuple(parts)

    def usual(
        self, bars: list[Bar], date_of: Callable[[int], bytes], last_dates: bytes
    ) -> tuple[int, bytes] | None:
        """:meth:`frames` of the usual update of the series read (``bars``: its cached bars),
        with each computation peeked at the newest bar here (:meth:`Incremental.peek_json`):
        ``None`` when one of them cannot (it must open, feed a bar that closed, or its values
        are not floats), a frame does not take a 16-bit length, or the group has no running
        computations (:attr:`running`): then the rows the usual way, and :meth:`frames`."""
        running = self.running
        if running is None or len(bars) < 2:
            return None
        newest = bars[-1]
        fed = bars[-2]
        time: int = newest[0]
        date = date_of(time)
        extra = len(date) + len(last_dates)
        parts: list[bytes] = []
        for incremental, (fixed, count) in zip(running, self.layout, strict=True):
            encoded = incremental.peek_json(newest, fed)
            if encoded is None:
                return None
            if count == 1:  # a bare number, where :meth:`frames` has it in brackets
                n = fixed + extra + len(encoded) + 2
                if not LEN_16 <= n < LEN_64:
                    return None
                parts += (n.to_bytes(2, "big"), date, encoded, last_dates)
                continue
            values = encoded[1:-1].split(b",")  # no comma in a number
            n = fixed + extra + len(encoded)
            if len(values) != count or not LEN_16 <= n < LEN_64:
                return None
            parts += (n.to_bytes(2, "big"), date)
            parts += values
            parts.append(last_dates)
        return time, self.template % tuple(parts)


class Encoded:
    """The parts of the ``indicator_update`` frames that many frames share, encoded once
    and kept (at most :data:`MAX_ENCODED` of each kind, all dropped past that): each chart
    id's template, each bar time's date, and each series' ``last_dates`` while its newest
    bar time stays (from ``cache``)."""

    def __init__(self, cache: BarCache) -> None:
        self.cache = cache
        # chart id -> (its row keys, its update message with a %b per value: ``chart_template``)
        self._templates: dict[str, tuple[tuple[str, ...], bytes]] = {}
        self._dates: dict[int, bytes] = {}  # bar time -> its date as a JSON string
        # series an update read -> (their newest bar times, ``last_dates`` encoded)
        self._last_dates: dict[tuple[SeriesId, ...], tuple[tuple[int | None, ...], bytes]] = {}

    def date(self, time: int) -> bytes:
        """The date of bar ``time`` as a JSON string."""
        date = self._dates.get(time)
        if date is None:
            if len(self._dates) >= MAX_ENCODED:
                self._dates.clear()
            date = self._dates[time] = orjson.dumps(intervals.format_date(time))
        return date

    def frame(self, update: IndicatorUpdate, dates: dict[tuple[SeriesId, ...], bytes]) -> bytes:
        """The text frame of ``protocol.encode(messages.indicator_update(...))``, from parts
        encoded once: the bytes around the values are the same for every update of a chart
        id, and the values (floats or None) are encoded in one call. ``dates``: the
        ``last_dates`` of the batch by series, filled here."""
        last_dates = dates.get(update.series)
        if last_dates is None:
            last_dates = dates[update.series] = self.last_dates(update.series)
        template = self._templates.get(update.chart_id)
        if template is None or template[0] is not update.names:
            if len(self._templates) >= MAX_ENCODED:
                self._templates.clear()
            template = (update.names, chart_template(update.chart_id, update.names))
            self._templates[update.chart_id] = template
        values = update.values
        date = self._dates.get(update.time)
        if date is None:
            if len(self._dates) >= MAX_ENCODED:
                self._dates.clear()
            date = self._dates[update.time] = orjson.dumps(values[0])
        encoded = orjson.dumps(values[1:])[1:-1].split(b",")  # no comma in a number
        return frame_of(template[1] % (date, *encoded, last_dates))

    def last_dates(self, series: tuple[SeriesId, ...]) -> bytes:
        """``{"<source>-<name>-<interval>": newest bar date}`` of what an update read,
        encoded, again only when a newest bar time changed."""
        cache = self.cache
        if len(series) == 1:  # the usual update: its own key
            cached = cache.peek(series[0])
            newest: tuple[int | None, ...] = (None if cached is None else cached.newest,)
        else:
            newest = tuple(
                None if (cached := cache.peek(key)) is None else cached.newest for key in series
            )
        known = self._last_dates.get(series)
        if known is not None and known[0] == newest:
            return known[1]
        if len(self._last_dates) >= MAX_ENCODED:
            self._last_dates.clear()
        dates = {}
        for key, time in zip(series, newest, strict=True):
            if time is not None:
                dates[f"{key.source}-{key.name}-{key.interval}"] = intervals.format_date(time)
        encoded = orjson.dumps(dates)
        self._last_dates[series] = (newest, encoded)
        return encoded
