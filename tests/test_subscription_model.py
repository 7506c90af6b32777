"""Subscriptions against a model: random interleavings of requests, closes, provider
restarts and time passing, driven through the real Hub with a fake provider and clock.

The model is the contract in a few lines: a client's requests take effect in the order
sent; a client receives the updates of exactly the keys it holds; a key streams upstream
exactly while some client holds it or its linger runs, and then the provider believes in
exactly the holders; ``/health`` counts the subscriptions held. Replies about one key come
in the order of the requests.

``make test`` runs a bounded number of examples; ``make fuzz`` (HYPOTHESIS_PROFILE=fuzz)
many more.
"""

from __future__ import annotations

import asyncio
import itertools
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from backend.hub.clients import Client
from backend.model.bars import SeriesId
from backend.runtime.messages import WireEvent
from tests.hub_fakes import SOURCE, FakeClock, about, connect, make_hub, request, send, taken

LINGER = 1.0
KEYS = [SeriesId(SOURCE, name, interval) for name in ("AAA", "BBB") for interval in ("1m", "5m")]

settings.register_profile(
    "default",
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,  # nothing written into the checkout; a failure prints its reproduction
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    max_examples=2000,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,  # nothing written into the checkout; a failure prints its reproduction
    print_blob=True,
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

keys = st.sampled_from(KEYS)
ops = st.lists(
    st.tuples(st.sampled_from(["data", "snapshot", "unsubscribe"]), keys), min_size=1, max_size=6
)


class HubAgainstModel(RuleBasedStateMachine):
    clients = Bundle("clients")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.hub, self.provider = make_hub(self.clock, STREAM_LINGER_SECONDS=LINGER)
        self.held: dict[int, set[SeriesId]] = {}  # the model: client id -> keys held
        self.linger_until: dict[SeriesId, float] = {}
        self.bar_time = 1_700_000_000
        self.ready = True  # the provider process reported Ready (False: dead or starting)

    def teardown(self) -> None:
        for client in list(self.hub.clients.values()):
            self.hub.remove_client(client)
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    # ------------------------------------------------------------------ the model

    def holders(self, key: SeriesId) -> set[int]:
        return {cid for cid, held in self.held.items() if key in held}

    def model_take(self, client_id: int, key: SeriesId) -> None:
        self.held[client_id].add(key)
        self.linger_until.pop(key, None)

    def model_leave(self, client_id: int, key: SeriesId) -> None:
        self.held[client_id].discard(key)
        if not self.holders(key):
            self.linger_until[key] = self.clock.now + LINGER

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: len(self.held) < 4)
    @rule(target=clients)
    def open_client(self) -> Client:
        client = connect(self.hub)
        self.held[client.id] = set()
        return client

    @rule(client=clients, frame=ops)
    def send_frame(self, client: Client, frame: list[tuple[str, SeriesId]]) -> None:
        if client.id not in self.held:
            return
        expected: dict[SeriesId, list[str]] = {}
        requests = []
        for op, key in frame:
            if op == "unsubscribe":
                requests.append(request("unsubscribe", key))
                held = key in self.held[client.id]
                expected.setdefault(key, []).append("unsubscribed" if held else "error")
                if held:
                    self.model_leave(client.id, key)
            else:
                stream = op == "data"
                requests.append(request("data", key, count=5, stream=stream))
                expected.setdefault(key, []).append("data_init")
                if stream:
                    self.model_take(client.id, key)
        self.loop.run_until_complete(send(self.hub, client, *requests))
        got: dict[SeriesId, list[str]] = {}
        for message in taken(client):
            about_key = about(message)
            assert about_key is not None, message
            got.setdefault(about_key, []).append(message["type"])
        assert got == expected  # every request answered, in order per key

    @rule(client=consumes(clients))
    def close_client(self, client: Client) -> None:
        if client.id not in self.held:
            return
        self.hub.remove_client(client)
        for key in list(self.held[client.id]):
            self.model_leave(client.id, key)
        del self.held[client.id]

    @rule(seconds=st.sampled_from([0.0, 0.3, LINGER / 2, LINGER, 2 * LINGER]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for key, until in list(self.linger_until.items()):
            if until <= self.clock.now:
                del self.linger_until[key]

    @precondition(lambda self: self.ready)
    @rule()
    def provider_dies(self) -> None:
        self.provider.die()
        self.ready = False

    @precondition(lambda self: not self.provider.alive)
    @rule()
    def provider_spawns(self) -> None:
        self.provider.spawn()

    @precondition(lambda self: self.provider.alive and not self.ready)
    @rule()
    def provider_is_ready(self) -> None:
        async def ready_and_refilled() -> None:
            self.hub.on_provider_ready(SOURCE)
            await asyncio.gather(*self.hub.refills.tasks)  # what was missed, refilled

        self.loop.run_until_complete(ready_and_refilled())
        self.ready = True
        self.linger_until.clear()  # a restarted process does not resume lingering keys
        assert not self.hub.fanout.refilling  # no live update is held any more
        for client_id in self.held:  # the refill reaches only the holders of a key
            client = self.hub.clients[client_id]
            refilled = {about(m) for m in taken(client) if m["type"] == "data_update"}
            assert refilled <= self.held[client_id], f"client {client_id}"

    @rule()
    def bars_arrive(self) -> None:
        self.bar_time += 60
        t = self.bar_time
        events: list[WireEvent] = [
            (k.name, k.interval, (t, 1.0, 2.0, 0.5, 1.5, 10.0), False) for k in KEYS
        ]

        async def arrive() -> None:
            self.hub.on_provider_events(SOURCE, events)
            # A key whose stream stopped and started again opens a bar newer than the one
            # it left forming: that one is refilled first (and the new bar follows).
            await asyncio.gather(*self.hub.refills.tasks)

        self.loop.run_until_complete(arrive())
        for client_id in self.held:
            client = self.hub.clients[client_id]
            updated = {about(m) for m in taken(client) if m["type"] == "data_update"}
            assert updated == self.held[client_id], f"client {client_id}"

    # ------------------------------------------------------------------ invariants

    @invariant()
    def registry_and_health_match_the_model(self) -> None:
        for client_id, held in self.held.items():
            assert self.hub.subs.keys_of(client_id) == held
        health = self.hub.health()
        assert health["subscriptions"] == sum(len(h) for h in self.held.values())
        assert health["clients"] == len(self.held)

    @invariant()
    def the_provider_streams_exactly_what_is_held_or_lingering(self) -> None:
        if not self.ready:
            return
        expected = {k for k in KEYS if self.holders(k)} | set(self.linger_until)
        assert self.provider.streaming() == expected
        for key in KEYS:
            holders = self.holders(key)
            if holders:
                assert self.provider.believes(key) == holders

    @invariant()
    def each_stream_started_once_per_run(self) -> None:
        hooks = self.provider.inner.hooks
        for key in KEYS:
            mine = [h[0] for h in hooks if h[1:] == (key.name, key.interval)]
            assert all(a != b for a, b in itertools.pairwise(mine)), mine


TestHubAgainstModel = HubAgainstModel.TestCase
TestHubAgainstModel.settings = PROFILE
