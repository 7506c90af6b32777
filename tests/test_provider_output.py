"""A provider process's ``print`` and stderr output becomes prefixed, masked, bounded log
lines (``backend.runtime.output``), never raw writes to the server's stdout."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from backend.runtime import output

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = """
import sys, threading
from backend import logs
from backend.runtime import output
logs.configure("INFO", "provider:demo", ["s3cr3t-value"])
output.capture()
print("hello with s3cr3t-value inside")
print("two", "parts", end="")
print(" and its end")
sys.stderr.write("from stderr\\n")
print("x" * 5000)
for i in range(500):
    print(f"flood {i}")
"""


def test_a_providers_prints_are_log_lines_prefixed_masked_cut_and_bounded() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # nothing raw on the server's stdout
    lines = done.stderr.splitlines()
    assert any("[provider:demo] stdout: hello with *** inside" in line for line in lines)
    assert any("[provider:demo] stdout: two parts and its end" in line for line in lines)
    assert any("[provider:demo] stderr: from stderr" in line for line in lines)
    long_line = next(line for line in lines if "xxxx" in line)
    assert long_line.endswith(f"... ({5000 - output.MAX_LINE} characters more)")
    floods = [line for line in lines if "flood" in line]
    assert len(floods) <= 2 * output.LINES_PER_SECOND  # a second may turn during the loop
    assert "s3cr3t-value" not in done.stderr


def test_lines_of_two_threads_printing_at_once_do_not_mix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = output.LogStream(logging.getLogger("stdout"), logging.INFO, sys.__stdout__)
    barrier = threading.Barrier(2)

    def printer(word: str) -> None:
        barrier.wait()
        for _ in range(10):
            stream.write(word)
            stream.write(" ")
            stream.write(word + "\n")

    caplog.set_level(logging.INFO, "stdout")
    threads = [threading.Thread(target=printer, args=(w,)) for w in ("alpha", "beta")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(caplog.messages)) == ["alpha alpha", "beta beta"]
    assert len(caplog.messages) == 20
