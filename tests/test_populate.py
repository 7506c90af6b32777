"""The ``populate.py`` command, with test providers registered through ``EXTRA_PROVIDERS``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import populate
from backend.symbols.index import SymbolIndex

ROOT = Path(__file__).resolve().parent.parent
EXTRA = (
    "tiny=tests.providers_for_populate:TinyProvider,"
    "tiny2=tests.providers_for_populate:TinyProvider,"
    "broken=tests.providers_for_populate:BrokenProvider"
)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A database path in a folder that does not exist yet; tiny and tiny2 enabled."""
    db = tmp_path / "new" / "folder" / "candlewire.sqlite3"
    monkeypatch.chdir(tmp_path)  # no .env file is read
    monkeypatch.setenv("DB", str(db))
    monkeypatch.setenv("EXTRA_PROVIDERS", EXTRA)
    monkeypatch.setenv("PROVIDERS", "tiny,tiny2")
    monkeypatch.setenv("POPULATE_TEST_LOG", str(tmp_path / "hooks.log"))
    monkeypatch.syspath_prepend(str(ROOT))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield db
    root.handlers[:], root.level = handlers, level  # populate configures logging


async def ids(db: Path) -> list[str]:
    index = await SymbolIndex.open(db)
    try:
        return [row["id"] for row in await index.search("", 1000)]
    finally:
        await index.close()


async def test_every_enabled_provider_is_stored_and_summarized(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert populate.main([]) == 0
    assert await ids(env) == [f"{key}-TINY{n}" for key in ("tiny", "tiny2") for n in range(3)]
    out = capsys.readouterr().out
    assert "tiny: 3 rows in " in out
    assert "tiny2: 3 rows in " in out


async def test_the_provider_option_populates_only_that_provider(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert populate.main([]) == 0
    monkeypatch.setenv("POPULATE_TEST_PREFIX", "NEW")
    assert populate.main(["--provider", "tiny2"]) == 0
    assert await ids(env) == [f"tiny-TINY{n}" for n in range(3)] + [
        f"tiny2-NEW{n}" for n in range(3)
    ]


@pytest.mark.parametrize("key", ["nope", "broken"])
def test_a_provider_that_is_not_enabled_is_a_usage_error_naming_the_enabled_ones(
    env: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    assert populate.main(["--provider", key]) == 2
    err = capsys.readouterr().err
    assert f"--provider {key!r}" in err
    assert "enabled providers: tiny, tiny2" in err
    assert not env.exists()


def test_a_configuration_error_is_one_line_and_exit_status_2(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROVIDERS", "tiny,bogus")
    assert populate.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "PROVIDERS" in err and "bogus" in err


async def test_a_failing_provider_does_not_stop_the_others_and_exits_1(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROVIDERS", "broken,tiny")
    assert populate.main([]) == 1
    assert await ids(env) == [f"tiny-TINY{n}" for n in range(3)]
    out = capsys.readouterr().out
    assert "broken: FAILED" in out and "cannot reach the upstream" in out
    assert "tiny: 3 rows" in out


async def test_a_provider_failing_mid_stream_keeps_its_previous_rows(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert populate.main(["--provider", "tiny"]) == 0
    monkeypatch.setenv("POPULATE_TEST_ROWS", "30000")
    monkeypatch.setenv("POPULATE_TEST_FAIL_AFTER", "25000")
    monkeypatch.setenv("POPULATE_TEST_PREFIX", "NEW")
    assert populate.main(["--provider", "tiny"]) == 1
    assert await ids(env) == [f"tiny-TINY{n}" for n in range(3)]


def test_init_and_shutdown_run_around_the_dataset_even_when_it_fails(
    env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POPULATE_TEST_FAIL_AFTER", "1")
    assert populate.main(["--provider", "tiny"]) == 1
    hooks = (tmp_path / "hooks.log").read_text().split()
    assert hooks == ["init", "get_dataset", "shutdown"]


def test_the_command_line_logs_to_stderr_and_prints_the_summary_to_stdout(
    env: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "populate.py"), "--provider", "tiny"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tiny: 3 rows in ")
    assert "tiny: 3 symbols stored" in result.stderr  # a log line, not a live progress bar


@pytest.mark.parametrize("folder", ["missing", "a file", ""])
async def test_a_csv_folder_that_is_not_a_folder_stops_populate_and_keeps_the_rows(
    env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    folder: str,
) -> None:
    """A mistyped ``CSV_FOLDER_PATH`` stored no csv symbol in place of the last ones, exit
    status 0 (and an empty one searched the working folder, .venv and all)."""
    data = tmp_path / "csv"
    data.mkdir()
    (data / "ONE.csv").write_text("date,close\n2026-01-01 00:00:00,1\n2026-01-01 00:01:00,2\n")
    monkeypatch.setenv("PROVIDERS", "csv")
    monkeypatch.setenv("CSV_FOLDER_PATH", str(data))
    assert populate.main([]) == 0
    assert await ids(env) == ["csv-ONE__close"]
    capsys.readouterr()
    value = {"missing": str(tmp_path / "nope"), "a file": str(data / "ONE.csv"), "": ""}[folder]
    monkeypatch.setenv("CSV_FOLDER_PATH", value)
    assert populate.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("populate:") and err.count("\n") == 1 and "CSV_FOLDER_PATH" in err
    assert await ids(env) == ["csv-ONE__close"]


@pytest.mark.parametrize("kind", ["a folder", "not sqlite", "under a file"])
def test_a_database_that_cannot_be_written_stops_populate_with_one_line_naming_db(
    env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    """``DB`` naming a folder, a file that is not SQLite or a path under a file printed a
    traceback per provider, then ``FAILED`` summaries (exit 1); now populate stops before
    any provider runs with one line naming ``DB`` (exit 2), as the server's start-up check
    does. (A read-only file is refused the same way, but not testable here: tests run as
    root, which writes read-only files.)"""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    db_path = {
        "a folder": tmp_path,
        "not sqlite": notes,
        "under a file": notes / "candlewire.sqlite3",
    }[kind]
    monkeypatch.setenv("DB", str(db_path))
    assert populate.main([]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("populate: DB: ") and captured.err.count("\n") == 1, captured.err
    assert str(db_path) in captured.err and "Traceback" not in captured.err
    assert captured.out == ""  # no summary: no provider ran
    assert not (tmp_path / "hooks.log").exists()


# ``python -c FULL_DISK populate.py``: populate.py with no file of it growing past 32 KB
FULL_DISK = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (32768, resource.RLIM_INFINITY)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


async def test_a_full_disk_fails_each_provider_in_one_line_and_keeps_the_rows(
    env: Path, tmp_path: Path
) -> None:
    """A disk with no room left (RLIMIT_FSIZE on the populate process: no file of it may
    grow past 32 KB): each provider's failure was a 20-line traceback of the writer's
    internals for an error that is no bug; now one line naming ``DB`` and the error, the
    summary says FAILED (exit 1), and the rows stored before are kept."""
    assert populate.main([]) == 0
    before = await ids(env)

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", FULL_DISK, str(ROOT / "populate.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    for key in ("tiny", "tiny2"):
        [line] = [line for line in result.stderr.splitlines() if f"{key}: populate failed" in line]
        assert f"DB {env}" in line and "disk I/O error" in line
        assert f"{key}: FAILED after " in result.stdout
    assert await ids(env) == before
    with contextlib.closing(sqlite3.connect(env)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
