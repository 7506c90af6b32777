"""A server whose app cannot start exits at once with code 3, leaving no process behind:
not the hub (held by the database thread its startup had opened), not a hub worker holding
its share of the port, not the provider processes it had started."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from backend import plugins
from backend.errors import ConfigError
from backend.provider import Provider
from tests import bus_deploy, harness
from tests.harness import ROOT, base_env, refused_start, until

STARTUP_FAILED = 3


def start_broken(env: dict[str, str], tmp: Path, *args: str) -> subprocess.Popen[bytes]:
    # A key file that is not a key: the alerts' startup fails after the database opened.
    (tmp / "vapid_private_key.pem").write_text("not a key\n")
    with (tmp / "server.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "server.py", "--port", "0", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def ends_with_everything(proc: subprocess.Popen[bytes], tmp: Path) -> None:
    parent = psutil.Process(proc.pid)
    started: set[int] = set()

    def exited() -> bool:
        with contextlib.suppress(psutil.Error):  # every process it started, while it runs
            started.update(child.pid for child in parent.children(recursive=True))
        return proc.poll() is not None

    try:
        until(exited, timeout=60, what="the server's exit")
    except AssertionError as exc:
        tail = (tmp / "server.log").read_text(errors="replace")[-2000:]
        raise AssertionError(f"{exc}; its log ends:\n{tail}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (tmp / "server.log").read_text(errors="replace")
    assert proc.returncode == STARTUP_FAILED, text[-2000:]
    assert "the hub did not start" in text

    def left() -> list[int]:
        return [p for p in started if psutil.pid_exists(p) and not _zombie(p)]

    until(lambda: not left(), timeout=20, what=f"the end of {sorted(started)}")


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def test_a_server_whose_startup_fails_exits_with_its_providers(tmp_path: Path) -> None:
    env = base_env(tmp_path, PROVIDERS="csv")
    ends_with_everything(start_broken(env, tmp_path), tmp_path)


def test_hub_workers_whose_startup_fails_all_exit(tmp_path: Path) -> None:
    env = bus_deploy.bus_env(tmp_path, bus_deploy.SHARED_REDIS, bus_deploy.new_prefix(), "hub")
    ends_with_everything(start_broken(env, tmp_path, "--role", "hub", "--workers", "2"), tmp_path)


def test_a_broken_plugin_entry_stops_the_start_with_a_message_naming_its_variable(
    tmp_path: Path,
) -> None:
    """A provider that cannot be imported used to start anyway, its process failing and
    restarting for ever; an indicator that cannot be loaded failed the hub's start-up with
    a traceback. Both now stop the start with exit code 2 and one line. A provider module is
    only located (it runs in its own process, never in the hub's)."""
    (tmp_path / "needs_env.py").write_text("import os\n\nSETTING = os.environ['MY_SETTING']\n")
    for extra, expected in (
        (
            {"EXTRA_PROVIDERS": "x=nomod:Nope", "PROVIDERS": "csv,x"},
            "candlewire: EXTRA_PROVIDERS: x: cannot import provider module 'nomod'",
        ),
        (
            {"EXTRA_INDICATORS": "x.y=nomod:Nope"},
            "candlewire: EXTRA_INDICATORS: cannot import indicator module 'nomod'",
        ),
        (
            {"EXTRA_INDICATORS": "x.y=backend.indicators.base:Indicator"},
            "candlewire: EXTRA_INDICATORS: 'backend.indicators.base:Indicator' must declare",
        ),
        (
            {"EXTRA_PROVIDERS": "x=tests.providers:Nope", "PROVIDERS": "csv,x"},
            "candlewire: EXTRA_PROVIDERS: x: provider module 'tests.providers' defines no 'Nope'",
        ),
        (
            {"EXTRA_INDICATORS": "x.y=needs_env:Nope", "PYTHONPATH": str(tmp_path)},
            "candlewire: EXTRA_INDICATORS: indicator module 'needs_env' failed on import: "
            "KeyError 'MY_SETTING'",
        ),
    ):
        done = refused_start(base_env(tmp_path, **extra))
        assert expected in done.stderr
        assert "Traceback" not in done.stderr


def test_with_workers_each_worker_imports_the_plugins_itself(tmp_path: Path) -> None:
    """The start-up check imported the indicator modules before ``--workers 2`` forked: the
    second worker inherited them, with the threads a module had started at import gone."""
    pids = tmp_path / "imported_by.txt"
    (tmp_path / "recorded.py").write_text(
        "import os\n"
        "from backend.indicators.examples import PercentChange as Recorded\n"
        f"with open({str(pids)!r}, 'a') as out:\n"
        "    out.write(f'{os.getpid()}\\n')\n"
    )
    env = bus_deploy.bus_env(
        tmp_path,
        bus_deploy.SHARED_REDIS,
        bus_deploy.new_prefix(),
        "hub",
        EXTRA_INDICATORS="mine.Recorded=recorded:Recorded",
        PYTHONPATH=str(tmp_path),
    )
    symbols = tmp_path / "symbols.sqlite3"
    filled = harness.populate({**env, "BUS_URL": "", "DB": str(symbols)})
    assert filled.returncode == 0, filled.stderr
    node = bus_deploy.node({**env, "DB": str(tmp_path / "node.sqlite3")}, tmp_path, "node")
    try:
        hub = bus_deploy.hub(env, tmp_path, "hub", "--workers", "2", symbols=symbols)
        try:
            until(
                lambda: pids.exists() and len(set(pids.read_text().split())) >= 2,
                timeout=60,
                what="both workers importing the module",
            )
        finally:
            hub.stop()
    finally:
        node.stop()


def test_ctrl_c_stops_the_server_cleanly_without_a_traceback(tmp_path: Path) -> None:
    """uvicorn re-raises SIGINT after its shutdown: every Ctrl+C of ``make run`` ended in a
    KeyboardInterrupt traceback."""
    with harness.populated_server(tmp_path, PROVIDERS="counting") as server:
        assert server.proc is not None
        children = psutil.Process(server.proc.pid).children(recursive=True)
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(harness.seconds(20)) == 130
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    until(lambda: not any(child.is_running() for child in children), what="providers gone")


def test_ctrl_c_exits_130_also_when_the_server_started_with_sigint_ignored(
    tmp_path: Path,
) -> None:
    """uvicorn re-raises the SIGINT that stopped it through the handler it found at its
    start; a process started with SIGINT ignored (as some launchers start children) exited
    0 after a Ctrl+C."""
    env = base_env(tmp_path, PROVIDERS="counting")
    assert harness.populate(env).returncode == 0
    with harness.ServerProcess(env, tmp_path / "server.log", ignore_sigint=True) as server:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(harness.seconds(20)) == 130


def test_loading_a_class_a_module_lacks_says_so_and_not_that_it_is_no_subclass() -> None:
    """populate.py loads providers with ``load_class``: a class name the module lacks was
    reported as "'m:Nope' is not a Provider subclass", where the server said "defines no"."""
    with pytest.raises(ConfigError, match=r"provider module 'tests\.providers' defines no 'Nope'"):
        plugins.load_class("tests.providers:Nope", Provider, "provider")
    with pytest.raises(ConfigError, match=r"'tests\.providers:dataset_row' is not a Provider"):
        plugins.load_class("tests.providers:dataset_row", Provider, "provider")


@pytest.mark.parametrize("kind", ["a folder", "not sqlite", "empty", "under a file"])
def test_a_database_that_cannot_be_opened_stops_the_start_with_one_line_naming_db(
    tmp_path: Path, kind: str
) -> None:
    """``DB`` naming a folder, a file that is not SQLite, nothing, or a path under a file
    failed the hub's startup with a traceback (exit 3); now the start stops before it
    listens, with exit code 2 and one line naming ``DB``."""
    (tmp_path / "notes.txt").write_text("not a database\n")
    (tmp_path / "folder").mkdir()
    db = {
        "a folder": str(tmp_path / "folder"),
        "not sqlite": str(tmp_path / "notes.txt"),
        "empty": "",
        "under a file": str(tmp_path / "notes.txt" / "candlewire.sqlite3"),
    }[kind]
    done = refused_start(base_env(tmp_path, DB=db))
    assert done.stderr.startswith("candlewire:") and done.stderr.count("\n") == 1, done.stderr
    assert "DB:" in done.stderr and "Traceback" not in done.stderr
    assert "listening" not in done.stdout


@pytest.mark.parametrize("kind", ["missing", "a file", "empty"])
def test_a_csv_folder_that_is_not_a_folder_stops_the_start_with_one_line(
    tmp_path: Path, kind: str
) -> None:
    """With the csv provider enabled, a ``CSV_FOLDER_PATH`` that does not exist (or is a
    file) started a server with no CSV symbol, one error line in its log; an empty one made
    it search the working folder. Now the start stops with exit code 2 and one line."""
    (tmp_path / "prices.csv").write_text("date,close\n")
    folder = {"missing": str(tmp_path / "nope"), "a file": str(tmp_path / "prices.csv")}
    done = refused_start(base_env(tmp_path, PROVIDERS="csv", CSV_FOLDER_PATH=folder.get(kind, "")))
    assert done.stderr.startswith("candlewire:") and done.stderr.count("\n") == 1, done.stderr
    assert "CSV_FOLDER_PATH" in done.stderr and "listening" not in done.stdout


def test_an_infinite_csv_replay_speed_stops_the_start_with_one_line(tmp_path: Path) -> None:
    """``CSV_REPLAY_SPEED=inf`` passed the check (>= 0) and started a server whose every CSV
    history answer was ``provider_error`` (an OverflowError in the replay clock)."""
    done = refused_start(base_env(tmp_path, PROVIDERS="csv", CSV_REPLAY_SPEED="inf"))
    assert done.stderr.count("\n") == 1 and "CSV_REPLAY_SPEED" in done.stderr, done.stderr
    assert "listening" not in done.stdout


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"ACCESS_TIERS": "{bad"}, "ACCESS_TIERS"),
        ({"ACCESS_TIERS": '{"free": {"upstream_call_per_second": 1}}'}, "ACCESS_TIERS"),
        ({"API_KEYS_FILE": "nope/keys"}, "API_KEYS_FILE"),
        ({"AUTH": "jwt", "JWT_PUBLIC_KEY": "nope/jwks.json"}, "JWT_PUBLIC_KEY"),
        ({"AUTH": "jwt", "JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nx\n"}, "JWT_PUBLIC_KEY"),
        ({"AUTH": "jwt", "JWT_PUBLIC_KEY": "{jwks}"}, "JWT_PUBLIC_KEY"),
        ({"AUTH": "jwt", "JWT_SECRET": "s" * 32, "JWT_ALGORITHMS": "none"}, "JWT_ALGORITHMS"),
        ({"AUTH": "jwt", "JWT_SECRET": "s" * 32, "JWT_ALGORITHMS": "HS999"}, "JWT_ALGORITHMS"),
        ({"BINANCE_API_URL": "api.binance.com/api"}, "BINANCE_API_URL"),
        ({"BINANCE_STREAM_URL": "https://stream.binance.com"}, "BINANCE_STREAM_URL"),
        ({"POLYGON_API_URL": "ftp://api.polygon.io"}, "POLYGON_API_URL"),
        ({"POLYGON_WS_URL": "delayed.polygon.io"}, "POLYGON_WS_URL"),
        ({"WS_ALLOWED_ORIGINS": "charts.example.com"}, "WS_ALLOWED_ORIGINS"),
        ({"CORS_ORIGINS": "https://pro.openbb.co/app"}, "CORS_ORIGINS"),
        ({"ALLOWED_HOSTS": "https://charts.example.com"}, "ALLOWED_HOSTS"),
        ({"ALLOWED_HOSTS": "charts.example.com:8000"}, "ALLOWED_HOSTS"),
    ],
    ids=lambda value: value if isinstance(value, str) else "-".join(value.values())[:40],
)
def test_a_bad_setting_stops_the_start_with_one_line_naming_it(
    tmp_path: Path, settings: dict[str, str], variable: str
) -> None:
    """DESIGN 4: settings are validated once at startup and an error names the variable.
    ``ACCESS_TIERS`` that is not JSON, an ``API_KEYS_FILE`` that cannot be read (with
    ``AUTH=none``) and a ``JWT_PUBLIC_KEY`` file that cannot be read ended the start with a
    traceback; a ``JWT_PUBLIC_KEY`` that is no key, ``JWT_ALGORITHMS=none`` (the README says
    never ``none``) or an algorithm PyJWT lacks, and upstream URLs without their scheme
    started a server that refused every token, or whose provider failed on every call; an
    origin without its scheme (or with a path) matched no browser's ``Origin``; a misspelt
    field of an access tier was ignored."""
    done = refused_start(base_env(tmp_path, **settings))
    assert done.stderr.startswith("candlewire:") and done.stderr.count("\n") == 1, done.stderr
    assert re.search(rf" {variable}[:.]", done.stderr) and "Traceback" not in done.stderr
    assert "listening" not in done.stdout
