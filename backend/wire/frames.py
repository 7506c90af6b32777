"""WebSocket text frames built once and written as they are (RFC 6455, section 5.2).

A server frame is never masked, so when no extension (compression) is negotiated the bytes
of a ``data_update`` frame are the same for every subscriber: the hub builds the frame once
per update and every client's writer hands those bytes to its transport unchanged. Frames
sent together may be joined into one ``bytes`` (the ``indicator_update``s of one update):
:func:`payloads_of` splits them again where each payload must be sent on its own.
"""

from __future__ import annotations

_FIN_TEXT = 0x81
_LEN_16 = 126
_LEN_64 = 127


def text_frame(payload: bytes) -> bytes:
    """A complete, unfragmented, unmasked text frame carrying ``payload`` (UTF-8)."""
    return text_frame_header(len(payload)) + payload


def text_frame_header(n: int) -> bytes:
    """The header of a text frame made by :func:`text_frame` for a payload of ``n`` bytes."""
    if n < _LEN_16:
        return bytes((_FIN_TEXT, n))
    if n < 1 << 16:
        return bytes((_FIN_TEXT, _LEN_16)) + n.to_bytes(2, "big")
    return bytes((_FIN_TEXT, _LEN_64)) + n.to_bytes(8, "big")


def payloads_of(frames: bytes) -> list[bytes]:
    """The payloads of the frames made by :func:`text_frame` joined back to back in
    ``frames`` (one frame: ``[payload_of(frames)]``)."""
    payloads = []
    start, end = 0, len(frames)
    while start < end:
        marker = frames[start + 1]
        if marker < _LEN_16:
            head, size = 2, marker
        elif marker == _LEN_16:
            head, size = 4, int.from_bytes(frames[start + 2 : start + 4], "big")
        else:
            head, size = 10, int.from_bytes(frames[start + 2 : start + 10], "big")
        payloads.append(frames[start + head : start + head + size])
        start += head + size
    return payloads


def payload_of(frame: bytes) -> bytes:
    """The payload of a frame made by :func:`text_frame`."""
    marker = frame[1]
    if marker < _LEN_16:
        return frame[2:]
    if marker == _LEN_16:
        return frame[4:]
    return frame[10:]
