"""Fill the symbol database from the enabled providers (DESIGN 5.4).

    python populate.py                  every provider in PROVIDERS
    python populate.py --provider KEY   only that one (it must be enabled)
    python populate.py --from-bus       from the provider nodes over Redis (BUS_URL; a hub
                                        needs no provider credentials; README "Scale-out")

Owns the populate command: for each provider it imports the registered class, calls
``init()``, streams ``get_dataset()`` into :func:`backend.symbols.writer.replace_provider_rows`
(which replaces that provider's rows atomically) and calls ``shutdown()``. Progress goes to
stderr (a live line on a terminal, log lines otherwise); a summary per provider goes to
stdout. One provider failing does not stop the others. Exit status: 0 when every provider
was stored, 1 when one failed, 2 for a configuration or usage error (a ``DB`` that cannot
be written among them), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from backend import logs
from backend.errors import ConfigError, StorageError
from backend.history.store import check_openable
from backend.runtime.registry import load_provider_class
from backend.settings import Settings, load_settings
from backend.symbols.writer import replace_provider_rows

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 5.0
BUS_TIMEOUT_SECONDS = 60.0  # --from-bus: until a node starts sending (and between chunks)

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class Outcome:
    """What populating one provider gave."""

    key: str
    rows: int
    seconds: float
    error: str = ""


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit status."""
    args = _arguments().parse_args(argv)
    try:
        settings = load_settings()
        keys = _chosen_keys(settings, args.provider)
        if "csv" in keys and not args.from_bus:
            settings.check_csv_folder()  # or the csv rows would be replaced by none
    except ConfigError as exc:
        print(f"populate: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.LOG_LEVEL, "populate", logs.secrets_of(settings))
    if problem := _check_database(settings):
        print(f"populate: {problem}", file=sys.stderr)
        return 2
    try:
        if args.from_bus and not settings.BUS_URL:
            raise ConfigError("--from-bus needs BUS_URL (redis://host:port/db)")
        outcomes = [_populate(settings, key, args.from_bus) for key in keys]
    except ConfigError as exc:
        print(f"populate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("populate: interrupted; that provider keeps its previous rows", file=sys.stderr)
        return 130
    _print_summary(outcomes)
    return 1 if any(outcome.error for outcome in outcomes) else 0


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="populate.py", description="Fill the symbol database from the enabled providers."
    )
    parser.add_argument("--provider", metavar="KEY", help="populate only this enabled provider")
    parser.add_argument(
        "--from-bus",
        action="store_true",
        help="ask the provider nodes over the bus (BUS_URL) instead of running the providers",
    )
    return parser


def _chosen_keys(settings: Settings, key: str | None) -> list[str]:
    """The providers to populate; ``ConfigError`` for a key that is not enabled."""
    enabled = list(settings.PROVIDERS)
    if key is None:
        return enabled
    if key not in enabled:
        known = (
            "registered but not in PROVIDERS" if key in settings.provider_registry() else "unknown"
        )
        raise ConfigError(
            f"--provider {key!r} is {known}; enabled providers: {', '.join(enabled) or 'none'}"
        )
    return [key]


def _check_database(settings: Settings) -> str:
    """Why ``DB`` cannot be written (a folder, a file that is not SQLite, a read-only file,
    a folder that cannot be made), or ``""``: one line before any provider runs, as the
    server's start-up check says it, instead of a traceback per provider."""
    try:
        check_openable(settings.DB, writable=True)
    except StorageError as exc:
        return f"DB: {exc}"
    return ""


def _populate(settings: Settings, key: str, from_bus: bool = False) -> Outcome:
    """Store one provider's dataset; a failure is logged and returned, not raised."""
    started = time.monotonic()
    try:
        with _progress(key) as progress:
            if from_bus:
                from backend.bus.datasets import fetch_dataset  # (redis-py: only for this)

                rows = replace_provider_rows(
                    settings.DB, key, fetch_dataset(settings, key, BUS_TIMEOUT_SECONDS), progress
                )
            else:
                rows = _store(settings, key, progress)
    except StorageError as exc:  # the database's, not a bug: no traceback (a full disk)
        logger.error("%s: populate failed: DB %s: %s", key, settings.DB, exc.__cause__ or exc)
        return Outcome(key, 0, time.monotonic() - started, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a provider's own code may raise anything; the others go on
        logger.exception("%s: populate failed", key)
        return Outcome(key, 0, time.monotonic() - started, f"{type(exc).__name__}: {exc}")
    return Outcome(key, rows, time.monotonic() - started)


def _store(settings: Settings, key: str, progress: ProgressCallback) -> int:
    """Run the provider's ``init``, ``get_dataset`` and ``shutdown`` around the store."""
    provider = load_provider_class(settings.provider_registry()[key])()
    provider._attach(key, settings, lambda event: None)
    if provider.source != key:
        logger.warning(
            "%s: provider says its source is %r; rows must use %r", key, provider.source, key
        )
    provider.init()
    try:
        return replace_provider_rows(settings.DB, key, provider.get_dataset(), progress)
    finally:
        provider.shutdown()


@contextmanager
def _progress(key: str) -> Iterator[ProgressCallback]:
    """A progress callback (rows so far): a live line on a terminal, log lines otherwise."""
    if sys.stderr.isatty():
        with _live_progress(key) as callback:
            yield callback
    else:
        yield _logged_progress(key)


@contextmanager
def _live_progress(key: str) -> Iterator[ProgressCallback]:
    from rich.console import Console  # (only on a terminal)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed:,} rows"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(key, total=None, rate="")
        started = time.monotonic()

        def update(rows: int) -> None:
            rate = rows / max(time.monotonic() - started, 1e-9)
            bar.update(task, completed=rows, rate=f"{rate:,.0f} rows/s")

        yield update


def _logged_progress(key: str) -> ProgressCallback:
    started = last = time.monotonic()

    def update(rows: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= LOG_EVERY_SECONDS:
            last = now
            logger.info("%s: %d rows read (%.0f rows/s)", key, rows, rows / (now - started))

    return update


def _print_summary(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        if outcome.error:
            print(f"{outcome.key}: FAILED after {outcome.seconds:.2f} s: {outcome.error}")
        else:
            rate = outcome.rows / max(outcome.seconds, 1e-9)
            print(
                f"{outcome.key}: {outcome.rows:,} rows in {outcome.seconds:.2f} s"
                f" ({rate:,.0f} rows/s)"
            )


if __name__ == "__main__":
    sys.exit(main())
