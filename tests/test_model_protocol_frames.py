"""The WebSocket protocol against a model, end to end: random frames from two real clients
to the real server (a streaming provider process), with closes and reconnects.

Frames mix ``data`` (stream on/off, counts valid, 0, negative, over ``MAX_COUNT``, not
whole), ``data_history``, ``unsubscribe``, ``search_data``, ``ping``, bad items and the
extensions' ``search_indicators`` and ``indicator``, as arrays or bare objects, with a key
asked several times in one frame and JSON objects with a repeated member. Every request
carries a ``tag`` (unknown keys are ignored, and an ``error`` echoes its request), so each
reply names the request it answers.

The model is the contract of README "The WebSocket protocol" and protocols.md 1.12:

* every request gets its replies (the ``error``s it must get, then the empty
  ``data_init`` / ``data_history`` / ``indicator_init`` it asked for) exactly once;
* replies about one series key come in the order of the requests (the extensions of a
  frame taken after its other items); searches in the order sent; the replies sent at once
  (``pong``, errors of requests that name no key) in their order within a frame;
* in a frame with ``data`` items and others, every reply of a ``data`` item comes before
  the replies of the others (but those of its key's requests sent before it);
* a ``data_update`` of a key comes only after a subscribing ``data_init`` of it and not
  after the ``unsubscribed`` of it (until the next subscribing ``data_init``); an
  ``indicator_update`` not after the ``unsubscribed`` of its series; a held key streams;
* ``/health`` counts exactly the subscriptions the open clients hold, and nothing is left
  after every client went.

``HYPOTHESIS_PROFILE=fuzz`` runs many more examples (300: 2-3 minutes, past pytest-timeout's
120 s on a loaded machine: add ``--timeout=0``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky, FlakyStrategyDefinition, HypothesisException
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from tests.harness import ServerProcess, WsClient, populated_server, seconds

MAX_COUNT = 40
SUBSCRIPTION_LIMIT = 3
SOURCE = "counting"
KEYS = [(SOURCE, name, interval) for name in ("AAA", "BBB", "CCC") for interval in ("1m", "5m")]
# unknown symbol, unknown source, an interval the symbol lacks, an interval nobody has
BAD_KEYS = [
    (SOURCE, "ZZZ", "1m"),
    ("nope", "AAA", "1m"),
    (SOURCE, "AAA", "1w"),
    (SOURCE, "AAA", "7m"),
]
NOW = "now"
SEARCH = "search"
EXT = "ext"

settings.register_profile(
    "protocol-default",
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,  # nothing written into the checkout; a failure prints its reproduction
    print_blob=True,
)
settings.register_profile(
    "protocol-fuzz",
    max_examples=300,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
    print_blob=True,
)
PROFILE = settings.get_profile(
    "protocol-fuzz" if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else "protocol-default"
)

SERVER: list[ServerProcess] = []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("model_protocol")
    with populated_server(
        tmp,
        PROVIDERS="counting",
        STREAM_LINGER_SECONDS="0.5",
        CANDLEWIRE_TEST_PERIOD="0.05",
        MAX_COUNT=str(MAX_COUNT),
        MAX_SUBSCRIPTIONS_PER_CLIENT=str(SUBSCRIPTION_LIMIT),
        # the fair-use budgets are not under test: a model run asks for a lot of history
        REQUESTS_PER_SECOND="10000",
        REQUESTS_BURST="100000",
        UPSTREAM_CALLS_PER_SECOND="10000",
        UPSTREAM_BURST="100000",
        PROVIDER_CALLS_PER_SECOND="10000",
    ) as running:
        yield running


# ---------------------------------------------------------------------- the model


@dataclass
class Slot:
    """One message a request must get: its type, and for an error its code (None: any)."""

    kind: str
    code: str | None = None
    or_code: str | None = None  # an ``error`` of this code instead (a known race, below)


UNTAGGED = 1_000_000  # bad items that are no object: this plus a tag, to tell them apart


@dataclass
class Expect:
    """What one request must get, in order, and how it counts for the frame's order."""

    tag: int
    frame: int
    lane: Hashable
    slots: deque[Slot]
    data_item: bool = False  # a ``data`` item of its frame (answered before the others)
    constrained: bool = False  # an other item: answered after every data item of its frame
    subscribes: bool = False  # its data_init starts the key's updates
    unsubscribes: bool = False  # its ``unsubscribed`` stops the key's (and indicators') updates
    key: tuple[str, str, str] | None = None
    echo: Any = None  # an untagged bad item: its ``error`` echoes it (frames tell them apart)
    search: str | None = None
    max_bars: int | None = None
    indicators_stopped: frozenset[str] = frozenset()  # ids its ``unsubscribed`` stops


@dataclass
class Peer:
    """One connection and what the model knows of it."""

    ws: WsClient
    seen: int = 0  # messages of ``ws`` checked
    lanes: dict[Hashable, deque[Expect]] = field(default_factory=dict)
    frames: dict[int, list[Expect]] = field(default_factory=dict)
    held: set[tuple[str, str, str]] = field(default_factory=set)  # as the server takes them
    indicators: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)  # live ids
    live: set[tuple[str, str, str]] = field(default_factory=set)  # as the client receives
    dead_indicators: set[str] = field(default_factory=set)
    # keys of streamed indicator requests that will fail: until answered (when is not known
    # here) an unsubscribe of the key takes them back (``unsubscribed``), after it finds none
    failing: set[tuple[str, str, str]] = field(default_factory=set)
    sent: list[str] = field(default_factory=list)  # the frames, for a failure's message

    def pending(self) -> int:
        return sum(len(queue) for queue in self.lanes.values())


def tag_of(echo: Any) -> int | None:
    if isinstance(echo, dict):
        tag = echo.get("tag")
        if isinstance(tag, int):
            return tag
        chart = echo.get("id")
        if isinstance(chart, str) and chart.startswith("ind"):
            return int(chart[3:])
    return None


# ---------------------------------------------------------------------- strategies

keys = st.sampled_from(KEYS)
any_keys = st.one_of(keys, keys, keys, st.sampled_from(BAD_KEYS))
counts = st.sampled_from([None, 1, 5, 30, 0, -3, 10**9, MAX_COUNT + 1, 2.5, "x", "omit"])
streams = st.sampled_from(["omit", True, True, False, None, "yes"])
ENDS = ["2030-01-01 00:00:00", "2000-01-01 00:00:00", None, "garbage", 7]


@st.composite
def items(draw: st.DrawFn) -> dict[str, Any] | Any:
    kind = draw(
        st.sampled_from(
            ["data"] * 5
            + ["data_history", "unsubscribe", "unsubscribe", "search_data", "ping", "bad"]
            + ["search_indicators", "indicator"]
        )
    )
    source, name, interval = draw(any_keys)
    item: dict[str, Any] = {"type": kind, "source": source, "name": name, "interval": interval}
    if kind in ("data", "data_history"):
        count = draw(counts)
        if count != "omit":
            item["count"] = count
    if kind == "data":
        stream = draw(streams)
        if stream != "omit":
            item["stream"] = stream
        if draw(st.integers(0, 9)) == 0:
            del item["name"]  # no key: the error and an empty data_init echoing what it can
    elif kind == "data_history":
        end = draw(st.sampled_from(ENDS))
        if end is not None:
            item["end"] = end
    elif kind == "search_data":
        item = {"type": kind, "search": draw(st.sampled_from(["", "aaa", "zzqq", 5]))}
    elif kind == "ping":
        item = {"type": kind}
        if draw(st.booleans()):
            item["id"] = {"bad": 1}
    elif kind == "bad":
        return draw(st.sampled_from([7, {"type": "bogus"}, {"no": "type"}, [1]]))
    elif kind == "search_indicators":
        item = {"type": kind, "search": draw(st.sampled_from(["", "rsi"]))}
    elif kind == "indicator":
        item = {
            "type": "indicator",
            "indicator": {"id": draw(st.sampled_from(["talib.momentum.RSI"] * 3 + ["no.such"]))},
            "inputs": {"timeperiod": 14},
            "dataMap": {
                "close": {
                    "source": source,
                    "name": name,
                    "interval": interval,
                    "value": f"{source}-{name}-{interval}-close",
                    "dataKey": "close",
                }
            },
            "count": draw(st.sampled_from([20, 5, 0])),
            "stream": draw(st.booleans()),
        }
    return item


frames = st.tuples(
    st.lists(items(), min_size=1, max_size=6),
    st.sampled_from(["array", "array", "array", "bare"]),
    st.booleans(),  # repeat a member of the first object (the last one counts)
)


def render(frame: list[Any], shape: str, repeat: bool) -> str:
    parts = [json.dumps(item) for item in frame]
    if repeat and isinstance(frame[0], dict) and frame[0].get("type") is not None:
        first = frame[0]
        decoy = "ping" if first["type"] != "ping" else "data"
        parts[0] = f'{{"type": "{decoy}", ' + parts[0][1:]
    if shape == "bare" and len(frame) == 1 and not isinstance(frame[0], list):
        return parts[0]  # (a list sent bare would be a frame of its items)
    return "[" + ", ".join(parts) + "]"


# ---------------------------------------------------------------------- expectations


def _key_of(item: dict[str, Any]) -> tuple[str, str, str] | None:
    fields = [item.get(f) for f in ("source", "name", "interval")]
    if all(isinstance(f, str) and f for f in fields):
        return (fields[0], fields[1], fields[2])
    return None


def _count_problem(item: dict[str, Any], limit: int) -> tuple[str | None, bool]:
    """(the error code of the count, or None; whether it is capped)."""
    count = item.get("count")
    if count is None:  # omitted or null: the default 300, or MAX_COUNT if that is smaller
        return None, False
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if not isinstance(count, int) or isinstance(count, bool):
        return "invalid_field", False
    if count > limit:
        return None, True
    if count < 1:
        return "count_out_of_range", False
    return None, False


def _bars_asked(item: dict[str, Any], capped: bool) -> int:
    count = item.get("count")
    if capped:
        return MAX_COUNT
    return int(count) if isinstance(count, int | float) else min(300, MAX_COUNT)


def _served(key: tuple[str, str, str]) -> bool:
    return key in KEYS


class ProtocolAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = SERVER[0]
        self.loop = asyncio.new_event_loop()
        self.tags = itertools.count(1)
        self.frames = itertools.count(1)
        self.taken_back: dict[int, str] = {}  # of the frame being sent: ``_taken_back``
        self.peers: dict[int, Peer | None] = {0: None, 1: None}
        for slot in self.peers:
            self.peers[slot] = self.run(self._open())

    # -------------------------------------------------------------- plumbing

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _open(self) -> Peer:
        return Peer(await WsClient.open(self.server.ws_url))

    def teardown(self) -> None:
        try:
            for slot, peer in self.peers.items():
                if peer is not None:
                    self.run(peer.ws.close())
                    self.peers[slot] = None
            self.run(self._hub_counts())
        finally:
            self.loop.close()

    async def _hub_counts(self) -> None:
        """``/health`` counts the open clients and what they hold (nothing leaks)."""
        peers = [p for p in self.peers.values() if p is not None]
        want = (len(peers), sum(len(p.held) for p in peers))
        deadline = time.monotonic() + seconds(15)
        while True:
            health = await asyncio.to_thread(self.server.get, "/health")
            got = (health["clients"], health["subscriptions"])
            if got == want:
                return
            assert time.monotonic() < deadline, f"/health {got}, model {want}"
            await asyncio.sleep(0.05)

    # -------------------------------------------------------------- the model of a frame

    def expect(self, peer: Peer, frame: list[Any], number: int) -> None:
        """The replies ``frame`` must get, from what the client held before it."""
        core = [i for i in frame if not _extension(i)]
        ordered = core + [i for i in frame if _extension(i)]
        self.taken_back = _taken_back(frame)
        expects = [self._expect(peer, item, number) for item in ordered]
        data_lanes = [e.lane for e in expects if e.data_item]
        if data_lanes and len(data_lanes) < len(expects):
            for index, e in enumerate(expects):
                later_data = {x.lane for x in expects[index + 1 :] if x.data_item}
                e.constrained = not e.data_item and e.lane not in later_data
        peer.frames[number] = expects
        for e in expects:
            peer.lanes.setdefault(e.lane, deque()).append(e)

    def _expect(self, peer: Peer, item: Any, frame: int) -> Expect:
        tag = item.get("tag", 0) if isinstance(item, dict) else 0
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(item, dict) or kind not in _TYPES:
            return Expect(tag, frame, (NOW, frame), deque([Slot("error")]), echo=item)
        handler = getattr(self, "_expect_" + kind)
        result: Expect = handler(peer, item, tag, frame)
        return result

    def _expect_data(self, peer: Peer, item: dict[str, Any], tag: int, frame: int) -> Expect:
        key = _key_of(item)
        if key is None:
            # at once too, but a data item: before the frame's others sent at once
            slots = deque([Slot("error"), Slot("data_init")])
            return Expect(tag, frame, (NOW, frame, "data"), slots, data_item=True)
        lane = ("key", key)
        code, capped = _count_problem(item, MAX_COUNT)
        stream = item.get("stream", True)
        stream = True if stream is None else stream
        if code is not None or not isinstance(stream, bool) or not _served(key):
            slots = deque([Slot("error"), Slot("data_init")])
            return Expect(tag, frame, lane, slots, data_item=True, key=key, max_bars=0)
        slots = deque()
        if capped:
            slots.append(Slot("error", "count_out_of_range"))
        subscribes = False
        if stream:
            if key in peer.held or len(peer.held) < SUBSCRIPTION_LIMIT:
                peer.held.add(key)
                subscribes = True
            else:
                slots.append(Slot("error", "limit_reached"))
        slots.append(Slot("data_init"))
        bars = _bars_asked(item, capped)
        return Expect(
            tag, frame, lane, slots, data_item=True, subscribes=subscribes, key=key, max_bars=bars
        )

    def _expect_data_history(
        self, peer: Peer, item: dict[str, Any], tag: int, frame: int
    ) -> Expect:
        key = _key_of(item)
        if key is None:
            return Expect(tag, frame, (NOW, frame), deque([Slot("error"), Slot("data_history")]))
        code, capped = _count_problem(item, MAX_COUNT)
        end = item.get("end")
        if end in (None, ""):
            code = code or "missing_field"
        elif end not in ("2030-01-01 00:00:00", "2000-01-01 00:00:00"):
            code = code or "invalid_field"
        slots: deque[Slot] = deque()
        if code is not None or key[2] == "7m" or not _served(key):
            slots.extend([Slot("error"), Slot("data_history")])
            return Expect(tag, frame, ("key", key), slots, key=key, max_bars=0)
        if capped:
            slots.append(Slot("error", "count_out_of_range"))
        slots.append(Slot("data_history"))
        bars = _bars_asked(item, capped)
        return Expect(tag, frame, ("key", key), slots, key=key, max_bars=bars)

    def _expect_unsubscribe(self, peer: Peer, item: dict[str, Any], tag: int, frame: int) -> Expect:
        key = _key_of(item)
        if key is None:
            return Expect(tag, frame, (NOW, frame), deque([Slot("error")]))
        stopped = frozenset(peer.indicators.pop(key, set()))
        failing = key in peer.failing
        peer.failing.discard(key)
        # a streamed indicator before it in its frame, taken after it: taken back by it
        in_frame = self.taken_back.get(id(item))
        if in_frame == "live":
            stopped = stopped | {"in-frame"}
        failing = failing or in_frame == "failing"
        if key in peer.held or stopped or failing:
            # A streamed ``indicator`` is live, or waits for its answer and is taken back:
            # ``unsubscribed`` either way. One that fails was either still waiting or is
            # answered already, with nothing live (``not_subscribed``): the model cannot tell.
            race = "not_subscribed" if failing and not (key in peer.held or stopped) else None
            peer.held.discard(key)
            slots = deque([Slot("unsubscribed", or_code=race)])
            return Expect(
                tag,
                frame,
                ("key", key),
                slots,
                unsubscribes=True,
                key=key,
                indicators_stopped=stopped,
            )
        slots = deque([Slot("error", "not_subscribed")])
        return Expect(tag, frame, ("key", key), slots, key=key)

    def _expect_search_data(self, peer: Peer, item: dict[str, Any], tag: int, frame: int) -> Expect:
        search = item.get("search")
        if not isinstance(search, str):
            return Expect(tag, frame, (NOW, frame), deque([Slot("error", "invalid_field")]))
        return Expect(tag, frame, SEARCH, deque([Slot("search_data_done")]), search=search)

    def _expect_ping(self, peer: Peer, item: dict[str, Any], tag: int, frame: int) -> Expect:
        if isinstance(item.get("id"), dict):
            return Expect(tag, frame, (NOW, frame), deque([Slot("error", "invalid_field")]))
        return Expect(tag, frame, (NOW, frame), deque([Slot("pong")]))

    def _expect_search_indicators(
        self, peer: Peer, item: dict[str, Any], tag: int, frame: int
    ) -> Expect:
        return Expect(tag, frame, EXT, deque([Slot("search_indicators_done")]))

    def _expect_indicator(self, peer: Peer, item: dict[str, Any], tag: int, frame: int) -> Expect:
        binding = item["dataMap"]["close"]
        key = (binding["source"], binding["name"], binding["interval"])
        ok = _served(key) and item["count"] >= 1 and item["indicator"]["id"] != "no.such"
        slots = deque([Slot("indicator_init")] if ok else [Slot("error"), Slot("indicator_init")])
        if ok and item["stream"] and id(item) in self.taken_back:
            peer.dead_indicators.add(item["id"])  # an unsubscribe after it in its frame
        elif ok and item["stream"]:
            peer.indicators.setdefault(key, set()).add(item["id"])
        elif item["stream"]:  # refused, as it is parsed or when it is answered
            peer.failing.add(key)
        if key[2] not in ("1m", "5m", "1w"):  # refused as parsed, naming no usable key
            return Expect(tag, frame, EXT, slots)
        return Expect(tag, frame, ("key", key), slots, key=key)

    # -------------------------------------------------------------- checking the replies

    def check(self, peer: Peer) -> None:
        """Match every message received since the last check against the model."""
        messages = peer.ws.messages
        while peer.seen < len(messages):
            message = messages[peer.seen]
            peer.seen += 1
            self._check_one(peer, message, messages[max(0, peer.seen - 30) : peer.seen])

    def _check_one(self, peer: Peer, message: dict[str, Any], recent: list[Any]) -> None:
        kind = message.get("type")
        if kind == "data_update":
            key = (message.get("source"), message.get("name"), message.get("interval"))
            assert key in peer.live, (
                f"data_update of {key} it does not hold: {_kinds(recent)}; {_state(peer)}"
            )
            return
        if kind == "indicator_update":
            assert message.get("id") not in peer.dead_indicators, (
                f"indicator_update of {message.get('id')} after the unsubscribe of its series"
            )
            return
        for lane, queue in peer.lanes.items():
            if queue and self._matches(queue[0], message):
                self._take(peer, lane, queue, message)
                return
        raise AssertionError(
            f"unexpected {_short(message)}; recent: {_kinds(recent)}; {_state(peer)}"
        )

    def _matches(self, expect: Expect, message: dict[str, Any]) -> bool:
        slot = expect.slots[0]
        kind = message.get("type")
        if slot.or_code is not None and kind == "error" and message.get("code") == slot.or_code:
            return tag_of(message.get("request")) == expect.tag
        if kind != slot.kind:
            return False
        if kind == "error":
            tag = tag_of(message.get("request"))
            if tag is None and expect.echo is not None:
                return bool(message.get("request") == expect.echo)
            return tag == expect.tag or (tag is None and expect.tag == 0)
        if kind in ("data_init", "data_history", "unsubscribed") and expect.key is not None:
            return (message.get("source"), message.get("name"), message.get("interval")) == (
                expect.key
            )
        if kind == "indicator_init":
            return bool(message.get("id") == f"ind{expect.tag}")
        if kind == "pong":
            return bool(message.get("id") == expect.tag)
        if kind == "search_data_done":
            return bool(message.get("search") == expect.search)
        return True

    def _take(
        self, peer: Peer, lane: Hashable, queue: deque[Expect], message: dict[str, Any]
    ) -> None:
        expect = queue[0]
        slot = expect.slots.popleft()
        if slot.code is not None:
            assert message.get("code") == slot.code, f"{_short(message)}, {slot}; {_state(peer)}"
        if expect.constrained:
            unanswered = [e.tag for e in peer.frames[expect.frame] if e.data_item and e.slots]
            assert not unanswered, (
                f"{message.get('type')} of tag {expect.tag} before the data items {unanswered} "
                f"of its frame were answered: {[e.tag for e in peer.frames[expect.frame]]}; "
                f"{_short(message)}; {_state(peer)}"
            )
        kind = message["type"]
        if kind in ("data_init", "data_history") and expect.max_bars is not None:
            bars = message.get("data")
            assert isinstance(bars, list) and len(bars) <= expect.max_bars, (expect, len(bars))
            if kind == "data_init" and expect.max_bars > 0:
                assert bars, f"an empty data_init of a served key: {message}"
        if kind == "data_init" and expect.subscribes and expect.key is not None:
            peer.live.add(expect.key)
        if expect.unsubscribes and expect.key is not None and kind == "unsubscribed":
            peer.live.discard(expect.key)
            peer.dead_indicators.update(expect.indicators_stopped)
        if not expect.slots:
            queue.popleft()

    async def _answered(self, peer: Peer) -> None:
        deadline = time.monotonic() + seconds(20)
        while True:
            self.check(peer)
            if not peer.pending():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply within {seconds(20)} s; {_state(peer)}")
            await asyncio.sleep(0.02)

    async def _streams(self, peer: Peer) -> None:
        """Every key the client holds (answered) gets an update after now."""
        mark = len(peer.ws.messages)
        for key in sorted(peer.live):
            try:
                await peer.ws.wait_for(
                    "data_update",
                    lambda m, key=key: (m.get("source"), m.get("name"), m.get("interval")) == key,
                    timeout=10,
                    after=mark,
                )
            except AssertionError as exc:
                raise AssertionError(f"{key} does not stream: {exc}; {_state(peer)}") from None
        self.check(peer)

    # -------------------------------------------------------------- rules

    @rule(slot=st.sampled_from([0, 1]), frame=frames)
    def send(self, slot: int, frame: tuple[list[Any], str, bool]) -> None:
        peer = self.peers[slot]
        assert peer is not None
        items, shape, repeat = frame
        number = next(self.frames)
        tagged = [self._tagged(item) for item in items]
        self.expect(peer, tagged, number)
        text = render(tagged, shape, repeat)
        peer.sent.append(text)
        self.run(peer.ws.send_raw(text))
        self.check(peer)

    def _tagged(self, item: Any) -> Any:
        """``item`` with its ``tag`` (and the indicator's or the ping's id made of it); a
        bad item that cannot carry one made unique, so that its ``error``'s echo names it."""
        if isinstance(item, int) and not isinstance(item, bool):
            return UNTAGGED + next(self.tags)
        if isinstance(item, list):
            return [UNTAGGED + next(self.tags)]
        if not isinstance(item, dict):
            return item
        tagged = {**item, "tag": next(self.tags)}
        if tagged.get("type") == "indicator":
            tagged["id"] = f"ind{tagged['tag']}"
        elif tagged.get("type") == "ping" and "id" not in tagged:
            tagged["id"] = tagged["tag"]
        return tagged

    @rule(slot=st.sampled_from([0, 1]), frame=frames)
    def send_again(self, slot: int, frame: tuple[list[Any], str, bool]) -> None:
        """Another frame (frames sent back to back outnumber the pauses)."""
        self.send(slot, frame)

    @rule(slot=st.sampled_from([0, 1]))
    def settle(self, slot: int) -> None:
        """Wait until every request of the client is answered, then check that what it
        holds streams and that the hub counts what the clients hold."""
        peer = self.peers[slot]
        assert peer is not None
        self.run(self._answered(peer))
        self.run(self._streams(peer))
        other = self.peers[1 - slot]
        assert other is not None
        self.run(self._answered(other))
        self.run(self._hub_counts())

    @precondition(lambda self: True)
    @rule(slot=st.sampled_from([0, 1]), wait=st.booleans())
    def reconnect(self, slot: int, wait: bool) -> None:
        """Close the socket (mid-flight unless ``wait``), check the hub let it go, open
        another and ask again for what it held."""
        peer = self.peers[slot]
        assert peer is not None
        if wait:
            self.run(self._answered(peer))
        held = sorted(peer.held)
        self.run(peer.ws.close())
        self.peers[slot] = None
        self.run(self._hub_counts())
        fresh = self.run(self._open())
        self.peers[slot] = fresh
        if held:
            frame = [
                {"type": "data", "source": s, "name": n, "interval": i, "count": 3}
                for s, n, i in held
            ]
            self.send(slot, (frame, "array", False))
            self.run(self._answered(fresh))
            self.run(self._streams(fresh))


_TYPES = {"data", "data_history", "unsubscribe", "search_data", "ping", "search_indicators"} | {
    "indicator"
}


def _taken_back(frame: list[Any]) -> dict[int, str]:
    """As the server takes a frame's items back (``requests._taken_back_in_frame``): the
    streamed ``indicator`` items whose series an ``unsubscribe`` after them names, and those
    unsubscribes, by ``id``: "live" for an unsubscribe that stops one that would stream,
    "failing" for one that stops only ones refused when answered."""
    streamed: list[tuple[int, tuple[str, str, str], bool]] = []
    taken: dict[int, str] = {}
    for item in frame:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "indicator" and item.get("stream"):
            binding = item["dataMap"]["close"]
            key = (binding["source"], binding["name"], binding["interval"])
            ok = _served(key) and item["count"] >= 1 and item["indicator"]["id"] != "no.such"
            streamed.append((id(item), key, ok))
        elif item.get("type") == "unsubscribe" and _key_of(item) is not None:
            stopped = [(i, ok) for i, key, ok in streamed if key == _key_of(item)]
            if stopped:
                taken.update((i, "item") for i, _ in stopped)
                taken[id(item)] = "live" if any(ok for _, ok in stopped) else "failing"
    return taken


def _extension(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") in ("search_indicators", "indicator")


def _state(peer: Peer) -> str:
    """What a failure's message says of the model: the requests still waiting for replies,
    per lane (tag, the replies left, subscribes / unsubscribes), the keys held as the
    server takes them and as the client receives them, and the last frames sent."""
    waiting = {
        str(lane): [
            (e.tag, [s.kind if s.code is None else f"{s.kind}:{s.code}" for s in e.slots])
            + (("subscribes",) if e.subscribes else ())
            + (("unsubscribes",) if e.unsubscribes else ())
            for e in queue
        ]
        for lane, queue in peer.lanes.items()
        if queue
    }
    return (
        f"waiting: {waiting}; held: {sorted(peer.held)}; live: {sorted(peer.live)}; "
        f"sent (last 8 frames): {peer.sent[-8:]}"
    )


def _short(message: dict[str, Any]) -> str:
    return repr({k: v for k, v in message.items() if k not in ("data", "metadata")})


def _kinds(messages: list[Any]) -> list[str]:
    return [
        f"{m.get('type')}:{m.get('name') or m.get('id') or tag_of(m.get('request')) or ''}"
        for m in messages
    ]


def _failures_in(report: BaseException, seen: set[int] | None = None) -> list[BaseException]:
    """The test's own failures behind a Hypothesis ``Flaky`` report: a ``FlakyFailure``
    holds them (with Hypothesis's account of the replay), a ``FlakyStrategyDefinition``
    raised while concluding a failed run has it as its context."""
    seen = set() if seen is None else seen
    if id(report) in seen:
        return []
    seen.add(id(report))
    if not isinstance(report, HypothesisException):
        # a BaseException (pytest-timeout's failure, a KeyboardInterrupt) is held wrapped
        wrapper = type(report).__module__, type(report).__name__
        if wrapper == ("hypothesis.errors", "_WrappedBaseException") and report.__cause__:
            return [report.__cause__]
        return [report]
    found: list[BaseException] = []
    if isinstance(report, BaseExceptionGroup):
        for inner in report.exceptions:
            found += _failures_in(inner, seen)
    context = report.__cause__ or report.__context__
    if not found and context is not None:
        found = _failures_in(context, seen)
    return found


def run_reporting_the_failure(machine: type[RuleBasedStateMachine]) -> None:
    """Run ``machine`` with :data:`PROFILE`. A failure that depends on the server's timing
    (the same program, derandomized, with replies and updates interleaved otherwise) need
    not fail again when Hypothesis replays it, and Hypothesis then reports ``Flaky``
    (``FlakyFailure`` around it, or ``FlakyStrategyDefinition`` with it as the context:
    the replay drew more or less than the failed run): the summary line named that. The
    failure itself is raised instead, its message (the frames sent, what the model waited
    for) in full, with a note of what Hypothesis reported and of any other failure of the
    replay. A ``Flaky`` report with no failure of the test behind it is raised as it is."""
    try:
        run_state_machine_as_test(machine, settings=PROFILE)
    except Flaky as flaky:
        failures = _failures_in(flaky)
        if not failures:
            raise
        first = failures[0]
        summary = str(flaky).splitlines()[0] if str(flaky) else ""
        first.add_note(
            f"(timing dependent: Hypothesis reported {type(flaky).__name__}: {summary} "
            "The replay of this case did not fail the same way; the failure above is the "
            "first run's, a real one.)"
        )
        for other in failures[1:]:
            first.add_note(f"(and the replay: {type(other).__name__}: {str(other)[:2000]})")
        raise first from None


@pytest.mark.slow
def test_the_protocol_against_its_model(server: ServerProcess) -> None:
    SERVER[:] = [server]
    run_reporting_the_failure(ProtocolAgainstModel)


class _FailsOnce(RuleBasedStateMachine):
    """Fails once, at the third step of its first run, as a timing-dependent failure of
    the real server does: Hypothesis's replay passes."""

    runs = 0
    timeout = False  # fails as pytest-timeout fails a test (a BaseException)

    def __init__(self) -> None:
        super().__init__()
        _FailsOnce.runs += 1
        self.steps = 0

    @rule()
    def step(self) -> None:
        self.steps += 1
        if _FailsOnce.timeout and _FailsOnce.runs == 1 and self.steps == 3:
            pytest.fail("Timeout >120.0s")
        assert _FailsOnce.runs > 1 or self.steps < 3, "the real failure, with its frames"


def test_a_failure_that_the_replay_does_not_repeat_is_reported_as_itself() -> None:
    """Not as Hypothesis's ``Flaky`` report around it (the summary line of a CI failure
    named ``FlakyFailure``, its message only in the group's listing)."""
    _FailsOnce.runs = 0
    with pytest.raises(AssertionError, match="the real failure, with its frames") as failed:
        run_reporting_the_failure(_FailsOnce)
    assert any("timing dependent" in note for note in failed.value.__notes__)
    assert not isinstance(failed.value, HypothesisException)

    _FailsOnce.runs, _FailsOnce.timeout = 0, True
    try:
        with pytest.raises(pytest.fail.Exception, match="Timeout"):
            run_reporting_the_failure(_FailsOnce)
    finally:
        _FailsOnce.timeout = False

    # Hypothesis's other report of it: the failed run stopped drawing earlier than a run
    # it had recorded with the same choices (the failure is the report's context)
    try:
        try:
            raise AssertionError("the real failure")
        except AssertionError:
            # raised as Hypothesis raises it, while the failure is handled
            raise FlakyStrategyDefinition("the second run stopped drawing earlier")  # noqa: B904
    except FlakyStrategyDefinition as report:
        assert [str(f) for f in _failures_in(report)] == ["the real failure"]
    assert _failures_in(FlakyStrategyDefinition("data generation depends on state")) == []
