"""End-to-end harness: run populate.py and the real server.py on an ephemeral port.

``ServerProcess`` starts ``python server.py --port 0`` with a given environment, reads the
URL it prints, and stops it with SIGTERM (then SIGKILL) at the end. ``WsClient`` is a thin
real WebSocket client that keeps every message and waits for the ones a test expects.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
FACTOR = float(os.environ.get("CANDLEWIRE_TEST_TIMEOUT_FACTOR", "1"))
URL_LINE = re.compile(r"listening on (http://\S+)")


def seconds(value: float) -> float:
    """A timeout scaled for slow machines."""
    return value * FACTOR


async def eventually(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "the condition"
) -> None:
    """Poll ``predicate`` until it is true (a synchronisation, never a fixed sleep); the
    timeout is scaled by ``seconds``. Fails the test naming ``what``."""
    deadline = time.monotonic() + seconds(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds(timeout):.1f} s")
        await asyncio.sleep(0.02)


def until(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "the condition"
) -> None:
    """The blocking twin of :func:`eventually`, for code outside an event loop."""
    deadline = time.monotonic() + seconds(timeout)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds(timeout):.1f} s")
        time.sleep(0.02)


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSV_", "PROVIDERS"))}
    env.update(
        {
            "DB": str(tmp / "candlewire.sqlite3"),
            "LOG_LEVEL": os.environ.get("CANDLEWIRE_TEST_LOG_LEVEL", "INFO"),
            "PYTHONUNBUFFERED": "1",
            "EXTRA_PROVIDERS": "my_provider=tests.providers:SeedProvider,"
            "counting=tests.providers:CountingProvider",
            "CANDLEWIRE_TEST_LOG": str(tmp / "provider.log"),
            # The stall probe's 10 ms timer costs an idle hub about 2% of a core on this
            # kind of machine (a wake-up is about 0.2 ms here); a few hubs live at any time
            # of a run, so the suite slows it tenfold (test_loop_stalls tests the probe).
            "LOOP_PROBE_SECONDS": "0.1",
        }
    )
    env.update(extra)
    return env


def populate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``populate.py *args`` with ``env``. A first populate into a new database whose
    settings name nothing of the test's own (no temporary path, no port of a fake: the
    project's sample files and the test providers) is run once per test process: later
    ones get a copy of the database it wrote, and its output."""
    key = _reusable_populate(env, args)
    if key in _POPULATED:
        copy, result = _POPULATED[key]
        shutil.copyfile(copy, env["DB"])
        return result
    result = _run_forked("populate.py", list(args), env, seconds(120))
    if key and result.returncode == 0 and _settled(Path(env["DB"])):
        copy = _populate_cache() / f"{len(_POPULATED)}.sqlite3"
        shutil.copyfile(env["DB"], copy)
        _POPULATED[key] = (copy, result)
    return result


def _run_script(
    argv: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """One of the project's scripts run to its end with ``env``, its output captured."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def _run_forked(
    script: str, argv: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """:func:`_run_script`, the script forked by the :class:`Launcher` (its output kept in
    temporary files, read once it has exited)."""
    if not forking():
        return _run_script([script, *argv], env, timeout)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = Forked(script, argv, env, out.fileno(), err.fileno())
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(seconds(5))
            raise
        texts = []
        for file in (out, err):
            file.seek(0)
            texts.append(file.read().decode())
    return subprocess.CompletedProcess([script, *argv], code, *texts)


def forking() -> bool:
    """Whether scripts are forked by the :class:`Launcher` (not with
    ``CANDLEWIRE_TEST_EXEC=1``: started with exec, as the benchmarks do)."""
    return os.environ.get("CANDLEWIRE_TEST_EXEC") != "1"


_POPULATED: dict[str, tuple[Path, subprocess.CompletedProcess[str]]] = {}
_OWN_VARIABLES = ("DB", "CANDLEWIRE_TEST_LOG")  # per test, and not read by populate itself


def _reusable_populate(env: dict[str, str], args: tuple[str, ...]) -> str:
    """The cache key of a populate that reads only what every test shares, or ''."""
    db = env.get("DB")
    if args or not db or Path(db).exists() or not _settled(Path(db)):
        return ""
    given = {k: v for k, v in env.items() if os.environ.get(k) != v and k not in _OWN_VARIABLES}
    shared = ("/tmp", tempfile.gettempdir(), str(Path(db).parent), "127.0.0.1", "localhost")
    if any(place in value for value in given.values() for place in shared):
        return ""
    return json.dumps(sorted(given.items()))


def _settled(db: Path) -> bool:
    """No write-ahead log or journal beside ``db``: the file alone is the database."""
    return not any(db.with_name(db.name + end).exists() for end in ("-wal", "-shm", "-journal"))


@functools.cache
def _populate_cache() -> Path:
    """This process's directory of populated databases, removed when it exits."""
    made = Path(tempfile.mkdtemp(prefix="candlewire-populated-"))
    atexit.register(shutil.rmtree, made, True)
    return made


def refused_start(env: dict[str, str], code: int = 2) -> subprocess.CompletedProcess[str]:
    """``server.py`` run with ``env``, expected to refuse to start: exit code ``code`` (2: a
    setting or the command line refused; 3: the hub's startup failed)."""
    done = _run_script(["server.py", "--host", "127.0.0.1", "--port", "0"], env, seconds(60))
    assert done.returncode == code, done.stderr[-2000:]
    return done


@contextlib.contextmanager
def populated_server(tmp: Path, **env: str) -> Iterator[ServerProcess]:
    """``populate.py`` then ``server.py`` with ``base_env(tmp, **env)``; stopped at the end."""
    full_env = base_env(tmp, **env)
    result = populate(full_env)
    assert result.returncode == 0, result.stderr
    with ServerProcess(full_env, tmp / "server.log") as running:
        yield running


def same_key(name: str, interval: str) -> Callable[[dict[str, Any]], bool]:
    """A ``WsClient.wait_for`` predicate: a message about ``(name, interval)``."""
    return lambda m: m.get("name") == name and m.get("interval") == interval


# ``python -c IGNORING_SIGINT server.py ...``: server.py started with SIGINT ignored
IGNORING_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


class Launcher:
    """This test process's ``tests/zygote.py``: servers forked from a process that has
    imported them already (started on first use, gone with this process)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "zygote.py"), str(theirs.fileno())],
            cwd=ROOT,
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # its own says nothing; each child gets the test's
        )
        theirs.close()
        self._control = ours
        self._answers = ours.makefile("rb")
        self._lock = threading.Lock()
        atexit.register(self.close)

    def close(self) -> None:
        """Let the launcher go (it exits when this end closes) and reap it."""
        self._answers.close()
        self._control.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def ask(self, request: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        with self._lock:
            socket.send_fds(self._control, [json.dumps(request).encode() + b"\n"], fds or [])
            line = self._answers.readline()
        if not line:
            raise RuntimeError(f"the server launcher exited ({self._process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer


_LAUNCHER: list[Launcher] = []
_LAUNCHING = threading.Lock()


def launcher() -> Launcher:
    """This process's launcher, started on first use (by one thread only)."""
    with _LAUNCHING:
        if not _LAUNCHER:
            _LAUNCHER.append(Launcher())
        return _LAUNCHER[0]


class Forked:
    """``python SCRIPT ARGV`` forked by the :class:`Launcher`, writing to the descriptors
    ``stdout`` and ``stderr``, with the part of :class:`subprocess.Popen`'s interface the
    tests use (``stdout``: the reading end the caller gives it, if any)."""

    def __init__(
        self, script: str, argv: list[str], env: dict[str, str], stdout: int, stderr: int
    ) -> None:
        request = {
            "op": "start",
            "script": script,
            "argv": argv,
            "env": env,
            "cwd": str(ROOT),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),  # a child's is its parent's
        }
        self.script = script
        self.pid: int = launcher().ask(request, [stdout, stderr])["pid"]
        self.stdout: IO[str] | None = None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = launcher().ask({"op": "status", "pid": self.pid})["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([self.script, self._state()], timeout or 0.0)
            time.sleep(0.02)
        return code

    def _state(self) -> str:
        """What the kernel says of the process, for a wait that timed out."""
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
                return f"pid {self.pid} state {stat.read().rsplit(')', 1)[1].split()[0]}"
        except OSError as exc:
            return f"pid {self.pid}: {exc.strerror}"

    def send_signal(self, number: int) -> None:
        if self.poll() is None:  # never a signal to a reused pid
            os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ServerProcess:
    """The real server in a child process."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        port: int = 0,
        args: tuple[str, ...] = (),
        ignore_sigint: bool = False,
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.port = port  # 0: any free port; a fixed port lets a restarted server keep its URL
        self.args = args  # more command-line arguments (``--role hub``, ``--workers 2``)
        self.ignore_sigint = ignore_sigint  # start it with SIGINT ignored, as some launchers do
        self.url = ""
        self.proc: subprocess.Popen[str] | Forked | None = None

    def start(self, timeout: float = 30.0, healthy: bool = True) -> ServerProcess:
        """Start it and wait until every provider runs (``healthy``) or, with ``healthy``
        False, until ``/health`` answers at all (a hub whose providers have no node)."""
        log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.url = ""
        command = ["server.py", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        if self.ignore_sigint:  # SIG_IGN survives exec
            command = ["-c", IGNORING_SIGINT, *command]
        if self.ignore_sigint or not forking():
            self.proc = subprocess.Popen(
                [sys.executable, *command],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        else:
            read, write = os.pipe()
            try:
                self.proc = Forked("server.py", command[1:], self.env, write, log.fileno())
            finally:
                os.close(write)
            self.proc.stdout = open(read, encoding="utf-8")  # noqa: SIM115 - closed in stop()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + seconds(timeout)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = URL_LINE.search(line)
            if match:
                self.url = match.group(1)
                break
        if not self.url:
            self.stop()
            raise RuntimeError(f"server did not start; log:\n{self.log_path.read_text()}")
        try:
            self.wait_healthy(timeout, running=healthy)
        except BaseException:  # not healthy: stop it, or it outlives the failed test
            self.stop()
            raise
        return self

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/websocket/"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=seconds(10)) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

    def wait_healthy(self, timeout: float = 30.0, running: bool = True) -> dict[str, Any]:
        deadline = time.monotonic() + seconds(timeout)
        while True:
            try:
                health: dict[str, Any] = self.get("/health")
                states = {p["state"] for p in health["providers"].values()}
                if states <= {"running"} or not running:
                    return health
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy; log:\n{self.log_path.read_text()}")
            time.sleep(0.1)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(seconds(15))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WsClient:
    """A real WebSocket client that records every message it receives."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.messages: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> WsClient:
        return cls(await connect(url, open_timeout=seconds(10), **kwargs))

    async def _read(self) -> None:
        async for raw in self.connection:
            self.messages.append(json.loads(raw))
            self._new.set()

    async def send(self, *requests: Any) -> None:
        await self.connection.send(json.dumps(list(requests)))

    async def send_raw(self, text: str | bytes) -> None:
        await self.connection.send(text)

    async def wait_for(
        self,
        kind: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda m: True,
        timeout: float = 10.0,
        after: int = 0,
    ) -> dict[str, Any]:
        """The first message of ``kind`` (from index ``after``) that satisfies ``predicate``."""
        deadline = time.monotonic() + seconds(timeout)
        while True:
            for message in self.messages[after:]:
                if message.get("type") == kind and predicate(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._reader.done():
                seen = [m.get("type") for m in self.messages[-20:]]
                raise AssertionError(f"no {kind!r} message within {timeout} s; last: {seen}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), remaining)

    def of_type(self, kind: str, after: int = 0) -> list[dict[str, Any]]:
        return [m for m in self.messages[after:] if m.get("type") == kind]

    async def close(self) -> None:
        await self.connection.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
