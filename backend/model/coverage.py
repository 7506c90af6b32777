"""Coverage: the spans of bar open times known to be complete, as a provider answered them.

A span ``[a, b]`` (inclusive, UTC seconds) means every bar whose open time lies in it is
known, including the fact that there is none (a holiday, a halt, before listing). Spans are
kept sorted and disjoint; touching spans are merged.
"""

from __future__ import annotations

import bisect


class Coverage:
    """A sorted set of disjoint inclusive spans."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, spans: list[tuple[int, int]] | None = None) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for a, b in spans or ():
            self.add(a, b)

    def add(self, a: int, b: int) -> None:
        """Mark ``[a, b]`` as known."""
        if b < a:
            return
        i = bisect.bisect_left(self._ends, a - 1)
        j = bisect.bisect_right(self._starts, b + 1)
        if i < j:
            a = min(a, self._starts[i])
            b = max(b, self._ends[j - 1])
        self._starts[i:j] = [a]
        self._ends[i:j] = [b]

    def span_at(self, t: int) -> tuple[int, int] | None:
        """The span containing ``t``, if any."""
        i = bisect.bisect_right(self._starts, t) - 1
        if i >= 0 and self._ends[i] >= t:
            return (self._starts[i], self._ends[i])
        return None

    def end_before(self, t: int) -> int | None:
        """The end of the last span that ends before ``t``."""
        i = bisect.bisect_left(self._ends, t) - 1
        return self._ends[i] if i >= 0 else None

    def remove_before(self, t: int) -> None:
        """Forget everything before ``t`` (retention)."""
        while self._starts and self._ends[0] < t:
            del self._starts[0], self._ends[0]
        if self._starts and self._starts[0] < t:
            self._starts[0] = t

    def remove_from(self, t: int) -> None:
        """Forget everything from ``t`` on (bars a stream missed there)."""
        while self._starts and self._starts[-1] >= t:
            del self._starts[-1], self._ends[-1]
        if self._ends and self._ends[-1] >= t:
            self._ends[-1] = t - 1

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def __bool__(self) -> bool:
        return bool(self._starts)
