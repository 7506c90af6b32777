"""The hub's counters and gauges, served at ``/metrics`` in Prometheus' text format.

The exposition is ``prometheus_client``'s (the Prometheus project's own Python client:
escaping, number formatting, the content type), and it adds the process's own figures
(``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ``process_open_fds``,
Python's garbage collections). The hub's own figures stay where they are kept:

* ``inc`` counts an event where it happens (with labels, e.g. ``code`` or ``source``);
* ``counter`` reads a running total its owner keeps (indicator computations, refusals);
  ``counter_by`` one per value of a label (e.g. per ``source``);
* ``gauge`` reads a level (clients, cached bars) when scraped; ``gauge_by`` one level per
  value of a label (e.g. per ``source``).

Every counter's name ends in ``_total``; a gauge's does not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from backend.errors import ConfigError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # of /metrics (hub and node)
_Labels = tuple[tuple[str, str], ...]


class Metrics:
    """The hub's figures, collected by ``prometheus_client`` when ``/metrics`` is read."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, _Labels]] = Counter()
        self.totals: dict[str, Callable[[], float]] = {}
        self.totals_by: dict[str, tuple[str, Callable[[], Mapping[str, float]]]] = {}
        self.gauges: dict[str, Callable[[], float]] = {}
        self.labelled: dict[str, tuple[str, Callable[[], Mapping[str, float]]]] = {}
        self.help: dict[str, str] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)
        for shared in (GC_COLLECTOR, PLATFORM_COLLECTOR):
            self.registry.register(shared)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Count ``amount`` events of counter ``name`` (its name ends in ``_total``)."""
        self.counters[(name, tuple(sorted(labels.items())))] += amount  # type: ignore[assignment]

    def counter(self, name: str, read: Callable[[], float], help_text: str) -> None:
        """A counter whose running total ``read`` returns (its owner keeps it)."""
        _check_total(name)
        self.totals[name] = read
        self.help[name] = help_text

    def counter_by(
        self, name: str, label: str, read: Callable[[], Mapping[str, float]], help_text: str
    ) -> None:
        """One running total per value of ``label``, which ``read`` maps each value to (its
        owner keeps them)."""
        _check_total(name)
        self.totals_by[name] = (label, read)
        self.help[name] = help_text

    def gauge(self, name: str, read: Callable[[], float], help_text: str = "") -> None:
        """A level that ``read`` returns when scraped."""
        _check_level(name)
        self.gauges[name] = read
        if help_text:
            self.help[name] = help_text

    def gauge_by(
        self, name: str, label: str, read: Callable[[], Mapping[str, float]], help_text: str
    ) -> None:
        """One level per value of ``label``: ``read`` maps each value to its level."""
        _check_level(name)
        self.labelled[name] = (label, read)
        self.help[name] = help_text

    def describe(self, name: str, help_text: str) -> None:
        self.help[name] = help_text

    def value(self, name: str, **labels: str) -> float:
        return self.counters[(name, tuple(sorted(labels.items())))]

    def render(self) -> str:
        """The exposition of every figure, the process's included."""
        return generate_latest(self.registry).decode()

    def families(self) -> Iterator[Metric]:
        """The hub's own metric families, read now."""
        samples: dict[str, list[tuple[_Labels, float]]] = {}
        for (name, labels), count in sorted(self.counters.items()):
            samples.setdefault(name, []).append((labels, float(count)))
        for name, read in self.totals.items():
            samples.setdefault(name, []).append(((), read()))
        for name, (label, read_by) in self.totals_by.items():
            found = samples.setdefault(name, [])
            found += [(((label, value),), total) for value, total in sorted(read_by().items())]
        for name, values in sorted(samples.items()):
            _check_total(name)
            family = Metric(name.removesuffix("_total"), self.help.get(name, ""), "counter")
            for labels, total in values:
                family.add_sample(name, dict(labels), total)
            yield family
        for name, read in sorted(self.gauges.items()):
            family = Metric(name, self.help.get(name, ""), "gauge")
            family.add_sample(name, {}, read())
            yield family
        for name, (label, levels) in sorted(self.labelled.items()):
            family = Metric(name, self.help.get(name, ""), "gauge")
            for label_value, level in sorted(levels().items()):
                family.add_sample(name, {label: label_value}, level)
            yield family


class _Collector:
    """``prometheus_client``'s collector protocol over :class:`Metrics` (whose ``describe``
    sets a help text, so it cannot be the collector itself)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families()


def _check_total(name: str) -> None:
    if not name.endswith("_total"):
        raise ConfigError(f"metric {name}: a counter's name ends in _total")


def _check_level(name: str) -> None:
    if name.endswith("_total"):
        raise ConfigError(f"metric {name}: a gauge's name does not end in _total")
