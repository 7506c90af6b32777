"""Whether a CSV file only grew since it was read, and the lines added to it.

A file read in full is remembered by a :class:`Mark`: its size then, where its last line
end was, its device and inode, a digest of sampled parts of it (the first and the last
:data:`EDGE_BYTES` and :data:`BLOCKS` blocks spread between them; all of it when small)
and a running hash of all its bytes. :func:`grown` tells a file that only grew (the same
inode, larger, the sampled parts of what it held unchanged) and gives its lines after the
last line end read, so only those are parsed: a recorder appending a bar a minute to a file
of a million rows costs the parse of one line, not of the file.

A same-length edit of rows far from both ends, made together with an append between two
looks, leaves the sampled parts as they were: :func:`verify` compares the whole of what was
read with its running hash (the provider does that at most once per
:data:`VERIFY_SECONDS`, while rows read this way were not verified), and a difference makes
the whole file read again. Anything else (a smaller file, another inode, a changed sample,
a last line read without its line end that the append does not end with one) is read in
full by the caller, as every change was before.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

EDGE_BYTES = 64 * 1024  # the first and the last bytes of what was read are compared
BLOCK_BYTES = 4 * 1024
BLOCKS = 16  # blocks compared between them
WHOLE_BYTES = 2 * EDGE_BYTES + BLOCKS * BLOCK_BYTES  # up to this, all of it is compared
CHUNK_BYTES = 1 << 20
VERIFY_SECONDS = 60.0


@dataclass(frozen=True)
class Mark:
    """What is kept of a file's bytes at a read, to tell a later append from a change."""

    device: int
    inode: int
    size: int  # the bytes read
    done: int  # the offset after the last line end among them (after it: a line without)
    sampled: bytes  # the digest of the sampled parts of the bytes read
    whole: Any  # a hashlib hash of all of them (extended by the lines appended)
    verified: float  # when all of them were last compared with the file (or read in full)
    pending: bool = False  # rows were read by :func:`grown` since


@dataclass(frozen=True)
class Growth:
    """The lines added to a file that only grew, and its mark after them."""

    data: bytes  # whole lines (and a last line without its line end, as the file has it)
    start: int  # the offset of ``data`` in the file
    mark: Mark


def mark(path: Path, size: int, now: float) -> Mark | None:
    """The mark of the first ``size`` bytes of ``path`` (read in full at ``now``); None when
    there is no line end in them (nothing can be appended after a line of them)."""
    try:
        with path.open("rb") as handle:
            st = os.fstat(handle.fileno())
            whole, done, offset = hashlib.blake2b(), 0, 0
            while offset < size:
                chunk = handle.read(min(CHUNK_BYTES, size - offset))
                if not chunk:
                    return None  # shorter than its size: changed meanwhile
                whole.update(chunk)
                end = chunk.rfind(b"\n")
                if end >= 0:
                    done = offset + end + 1
                offset += len(chunk)
            sampled = _sampled(handle, size)
    except OSError:
        return None
    if not done:
        return None
    return Mark(st.st_dev, st.st_ino, size, done, sampled, whole, now)


def grown(path: Path, old: Mark, size: int, whole_lines: bool = False) -> Growth | None:
    """The lines added to ``path`` (``size`` bytes now) since ``old`` if it only grew;
    None when it may have changed otherwise, or cannot be read (read it in full then).
    With ``whole_lines`` (its last line is being written) only the lines ended are given,
    and None when there is none."""
    if size <= old.size:
        return None
    try:
        with path.open("rb") as handle:
            st = os.fstat(handle.fileno())
            if (st.st_dev, st.st_ino) != (old.device, old.inode):
                return None  # another file: renamed over it (a rotation, a new export)
            if _sampled(handle, old.size) != old.sampled:
                return None
            handle.seek(old.done)
            data = _read_exactly(handle, size - old.done)
            if data is None:
                return None
            end = _end(data, old, whole_lines)
            start = _start(data, old)
            if end is None or start is None or end < start:
                return None
            sampled = _sampled(handle, end)
    except OSError:
        return None
    added = data[start - old.done : end - old.done]
    whole = old.whole.copy()
    whole.update(data[old.size - old.done : end - old.done])
    last = added.rfind(b"\n")
    done = start + last + 1 if last >= 0 else start
    new = replace(old, size=end, done=done, sampled=sampled, whole=whole, pending=True)
    return Growth(added, start, new)


def _start(data: bytes, old: Mark) -> int | None:
    """Where the lines added begin in the file (``data`` is from ``old.done`` on): after
    the last line end read, or after the line end that ends a last line read without one;
    None when that line went on (or a row was glued to it): it changed."""
    if old.done == old.size:
        return old.done
    rest = data[old.size - old.done :]
    ended = 2 if rest.startswith(b"\r\n") else 1 if rest.startswith(b"\n") else 0
    return old.size + ended if ended else None


def _end(data: bytes, old: Mark, whole_lines: bool) -> int | None:
    """Where the bytes to read end in the file: its end, or after its last line end
    (``whole_lines``) if that is after what was read."""
    if not whole_lines:
        return old.done + len(data)
    end = old.done + data.rfind(b"\n") + 1
    return end if end > old.size else None


def verify(path: Path, old: Mark) -> bool:
    """Whether the first ``old.size`` bytes of ``path`` are still those read."""
    whole = hashlib.blake2b()
    try:
        with path.open("rb") as handle:
            st = os.fstat(handle.fileno())
            if (st.st_dev, st.st_ino) != (old.device, old.inode):
                return False
            left = old.size
            while left:
                chunk = handle.read(min(CHUNK_BYTES, left))
                if not chunk:
                    return False
                whole.update(chunk)
                left -= len(chunk)
    except OSError:
        return False
    return bool(whole.digest() == old.whole.digest())


def due(old: Mark | None, now: float) -> bool:
    """Whether rows read by :func:`grown` wait for :func:`verify` since long enough."""
    return old is not None and old.pending and now - old.verified >= VERIFY_SECONDS


def _sampled(handle: BinaryIO, size: int) -> bytes:
    """The digest of the sampled parts of the first ``size`` bytes of ``handle``."""
    digest = hashlib.blake2b(str(size).encode())
    for offset, length in _parts(size):
        handle.seek(offset)
        digest.update(handle.read(length))
    return digest.digest()


def _parts(size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of the parts of ``size`` bytes that are compared."""
    if size <= WHOLE_BYTES:
        return [(0, size)]
    middle = size - 2 * EDGE_BYTES - BLOCK_BYTES
    blocks = [EDGE_BYTES + middle * (k + 1) // (BLOCKS + 1) for k in range(BLOCKS)]
    return [
        (0, EDGE_BYTES),
        *((offset, BLOCK_BYTES) for offset in blocks),
        (size - EDGE_BYTES, EDGE_BYTES),
    ]


def _read_exactly(handle: BinaryIO, length: int) -> bytes | None:
    """``length`` bytes from where ``handle`` is; None when the file ends before."""
    data = handle.read(length)
    return data if len(data) == length else None
