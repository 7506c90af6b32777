"""A pre-imported launcher for the test suite: ``server.py`` and ``populate.py`` by ``fork``.

Each test process starts about twenty servers, and a fresh ``python server.py`` spends most
of its start-up importing (FastAPI, pydantic, uvicorn, numpy, TA-Lib: about 0.7 s of CPU
on this kind of machine, a fifth of the suite's CPU over some 260 starts). This process
imports the server's modules once and then, for each request of its test process, forks a
child that becomes ``python server.py ARGS`` (or ``populate.py``) with the request's
environment, working directory, stdout and stderr: the script run as ``__main__``, its own
provider processes (started with ``spawn`` as always, importing the script), its own exit
status.

    python tests/zygote.py FD        FD: this end of a socketpair to the test process

Requests are one JSON line each, answered with one JSON line:

- ``{"op": "start", "script": "server.py", "argv": [...], "env": {...}, "cwd": "...",
  "nofile": [SOFT, HARD]}`` with the child's stdout
  and stderr descriptors passed alongside (``SCM_RIGHTS``): ``{"pid": N}``.
- ``{"op": "status", "pid": N}``: ``{"returncode": CODE}`` once the child has exited (reaped
  then; a negative code is the signal that ended it, as :mod:`subprocess` says it), else
  ``{"returncode": null}``.

The launcher holds no thread, event loop or multiprocessing helper when it forks, and exits
when its test process closes the socket. ``tests/harness.py`` (``ServerProcess``) uses it;
``CANDLEWIRE_TEST_EXEC=1`` starts every server with ``exec`` instead.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import resource
import runpy
import socket
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAX_FDS = 2


PRELOADED = (
    "backend.serving",  # server.py's run()
    "backend.app",  # what run() imports before it serves: the hub and its app
    "backend.hub.alerting",
    "backend.ws.entrance",
    "populate",
)


def preload() -> None:
    """Import what ``server.py`` and ``populate.py`` import before they serve or write."""
    for name in PRELOADED:
        importlib.import_module(name)


def serve(control: socket.socket) -> dict[str, Any] | None:
    """Answer requests until the test process goes; in a forked child, return its request."""
    while True:
        message, fds, _flags, _address = socket.recv_fds(control, 65536, MAX_FDS)
        if not message:
            return None
        buffered = message
        while not buffered.endswith(b"\n"):  # a request longer than one read
            more = control.recv(65536)
            if not more:
                return None
            buffered += more
        request = json.loads(buffered)
        if request["op"] == "start":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                control.close()
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                for fd in fds:
                    os.close(fd)
                return request
            for fd in fds:
                os.close(fd)
            answer: dict[str, Any] = {"pid": pid}
        else:
            answer = {"returncode": exit_code(int(request["pid"]))}
        control.sendall(json.dumps(answer).encode() + b"\n")


def exit_code(pid: int) -> int | None:
    """The exit status of child ``pid`` (reaped now), or None while it runs."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1  # not ours, or reaped already
    return os.waitstatus_to_exitcode(status) if done else None


def become_script(request: dict[str, Any]) -> None:
    """This forked child turns into ``python SCRIPT ARGV`` and exits with its status.

    What a new interpreter takes from its parent and its environment is taken here from the
    request: the environment, the working directory, the open-file limit, ``PYTHONPATH``'s
    entries on ``sys.path`` and ``PYTHONUNBUFFERED``'s unbuffered stdout and stderr."""
    os.chdir(request["cwd"])
    resource.setrlimit(resource.RLIMIT_NOFILE, tuple(request["nofile"]))
    ours = os.environ.get("PYTHONPATH", "")
    os.environ.clear()
    os.environ.update(request["env"])
    theirs = os.environ.get("PYTHONPATH", "")
    sys.path[1:] = [*entries(theirs), *(p for p in sys.path[1:] if p not in entries(ours))]
    importlib.invalidate_caches()  # modules the test wrote after this process started
    reopen_stdio(unbuffered=bool(os.environ.get("PYTHONUNBUFFERED")))
    script = str(ROOT / request["script"])
    sys.argv = [script, *request["argv"]]
    sys.path[0] = os.path.dirname(script)
    # as ``python SCRIPT``: the script is ``__main__`` (which ``spawn`` imports in each
    # provider process), and its ``sys.exit`` or uncaught exception ends this process
    runpy.run_path(script, run_name="__main__")
    sys.exit(0)


def entries(python_path: str) -> list[str]:
    """The ``sys.path`` entries a ``PYTHONPATH`` of ``python_path`` adds."""
    return [os.path.abspath(p) for p in python_path.split(os.pathsep) if p]


def reopen_stdio(unbuffered: bool) -> None:
    """``sys.stdout`` and ``sys.stderr`` on descriptors 1 and 2 as a new interpreter makes
    them: stdout block-buffered (line-buffered on a terminal), stderr line-buffered, both
    written through with ``PYTHONUNBUFFERED``."""
    for name in ("stdout", "stderr"):
        raw = io.FileIO(1 if name == "stdout" else 2, "w", closefd=False)
        buffer: io.RawIOBase | io.BufferedWriter = raw if unbuffered else io.BufferedWriter(raw)
        stream = io.TextIOWrapper(
            buffer,  # type: ignore[arg-type]
            encoding=getattr(sys, name).encoding,
            errors="backslashreplace" if name == "stderr" else "strict",
            line_buffering=not unbuffered and (name == "stderr" or raw.isatty()),
            write_through=unbuffered,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # as ``python server.py`` from the checkout has it
    preload()
    with socket.socket(fileno=int(sys.argv[1])) as control:
        child_request = serve(control)
    if child_request is not None:
        become_script(child_request)
