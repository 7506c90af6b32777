"""Counters and gauges of the hub, rendered as Prometheus text at ``/metrics``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable


class Metrics:
    """Monotonic counters (with optional labels) and gauges computed on demand."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[str, Callable[[], float]] = {}
        self.help: dict[str, str] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += amount  # type: ignore[assignment]

    def gauge(self, name: str, read: Callable[[], float], help_text: str = "") -> None:
        self.gauges[name] = read
        if help_text:
            self.help[name] = help_text

    def describe(self, name: str, help_text: str) -> None:
        self.help[name] = help_text

    def value(self, name: str, **labels: str) -> float:
        return self.counters[(name, tuple(sorted(labels.items())))]

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted({name for name, _ in self.counters}):
            lines += self._header(name, "counter")
            for (counter, labels), value in sorted(self.counters.items()):
                if counter == name:
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        for name, read in sorted(self.gauges.items()):
            lines += self._header(name, "gauge")
            lines.append(f"{name} {read():g}")
        return "\n".join(lines) + "\n"

    def _header(self, name: str, kind: str) -> list[str]:
        header = [f"# HELP {name} {self.help[name]}"] if name in self.help else []
        return [*header, f"# TYPE {name} {kind}"]


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
