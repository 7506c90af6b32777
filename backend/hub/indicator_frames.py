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

Not: which clients get the frames and how (``indicating``), the values (``backend.indicators``).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from backend.indicators.incremental import Incremental
from backend.indicators.live import Group, Shared
from backend.model.bars import Bar, SeriesId
from backend.wire.frames import text_frame

dumps = orjson.dumps

LEN_16, LEN_64 = 126, 1 << 16  # payload sizes with a 16-bit length in the frame header


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
