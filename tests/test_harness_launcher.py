"""The test launcher (``tests/zygote.py``) runs a script as ``python SCRIPT`` would: what a
forked script sees of its environment, its path, its limits and its streams, and the exit
status its test process gets."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Forked, _run_forked, seconds

REPORT = """
import json, os, resource, sys
print(json.dumps({
    "name": __name__,
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "marker": os.environ.get("LAUNCHER_MARKER"),
    "launchers": os.environ.get("OPENBLAS_NUM_THREADS"),
    "path": sys.path[:3],
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    "main_file": sys.modules["__main__"].__file__,
    "imported": __import__("written_later").VALUE,
}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_a_forked_script_gets_the_environment_path_limits_and_exit_status_of_a_new_one(
    tmp_path: Path,
) -> None:
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    (tmp_path / "written_later.py").write_text("VALUE = 42\n")  # after the launcher started
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 500)
    env = {"LAUNCHER_MARKER": "yes", "PYTHONPATH": str(tmp_path), "PATH": os.environ["PATH"]}
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        done = _run_forked(str(script), ["7", "x y"], env, seconds(30))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert done.returncode == 7, done.stderr
    assert done.stderr == "to stderr\n"
    seen = json.loads(done.stdout)
    assert seen["name"] == "__main__"
    assert seen["argv"] == ["7", "x y"]
    assert seen["marker"] == "yes"
    assert seen["launchers"] is None  # the launcher's own environment is not the script's
    assert seen["path"][:2] == [str(tmp_path)] * 2  # the script's folder, then PYTHONPATH's
    assert seen["nofile"] == lower
    assert seen["main_file"] == str(script)
    assert seen["imported"] == 42


def test_an_uncaught_exception_exits_1_with_its_traceback(tmp_path: Path) -> None:
    script = tmp_path / "fails.py"
    script.write_text("raise RuntimeError('bad thing')\n")
    done = _run_forked(str(script), [], {"PATH": os.environ["PATH"]}, seconds(30))
    assert done.returncode == 1
    assert "RuntimeError: bad thing" in done.stderr


def test_a_signal_gives_the_negative_code_and_a_wait_times_out_like_popen(
    tmp_path: Path,
) -> None:
    script = tmp_path / "waits.py"
    script.write_text("import sys, time\nprint('up', flush=True)\ntime.sleep(60)\n")
    read, write = os.pipe()
    try:
        child = Forked(str(script), [], {"PATH": os.environ["PATH"]}, write, sys.stderr.fileno())
    finally:
        os.close(write)
    with open(read, encoding="utf-8") as out:
        assert out.readline() == "up\n"
        assert child.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.1)
        child.send_signal(signal.SIGTERM)
        assert child.wait(seconds(10)) == -signal.SIGTERM
    assert child.poll() == -signal.SIGTERM
    child.kill()  # gone: no signal to a pid that may be another process's by now
    assert child.returncode == -signal.SIGTERM


def test_a_script_over_its_time_is_killed_and_the_timeout_raised(tmp_path: Path) -> None:
    script = tmp_path / "hangs.py"
    script.write_text("import time\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        _run_forked(str(script), [], {"PATH": os.environ["PATH"]}, 0.5)
