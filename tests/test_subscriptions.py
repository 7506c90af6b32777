"""The subscription registry, driven without an event loop or sockets."""

from __future__ import annotations

from backend.hub.subscriptions import Change, Subscriptions
from backend.model.bars import SeriesId

BTC = SeriesId("csv", "BTCUSD", "1m")
ETH = SeriesId("csv", "ETHUSD", "1m")


def test_first_subscriber_then_second_then_duplicate() -> None:
    subs = Subscriptions()
    assert subs.add(1, BTC) is Change.FIRST
    assert subs.add(2, BTC) is Change.ADDED
    assert subs.add(1, BTC) is Change.ALREADY
    assert subs.subscribers(BTC) == {1, 2}


def test_last_subscriber_leaving_is_reported_once() -> None:
    subs = Subscriptions()
    subs.add(1, BTC)
    subs.add(2, BTC)
    assert subs.remove(1, BTC) is Change.REMOVED
    assert subs.remove(2, BTC) is Change.LAST
    assert subs.remove(2, BTC) is Change.ABSENT
    assert not subs.has(BTC)


def test_dropping_a_client_releases_all_its_keys() -> None:
    subs = Subscriptions()
    subs.add(1, BTC)
    subs.add(1, ETH)
    subs.add(2, ETH)
    changes = dict(subs.drop_client(1))
    assert changes == {BTC: Change.LAST, ETH: Change.REMOVED}
    assert subs.keys_of(1) == frozenset()
    assert subs.subscribers(ETH) == {2}


def test_a_reconnect_resubscribing_everything_is_harmless() -> None:
    subs = Subscriptions()
    for _ in range(3):
        subs.add(7, BTC)
        subs.add(7, ETH)
    assert len(subs) == 2


def test_pairs_for_a_source_are_what_a_restarted_provider_needs() -> None:
    subs = Subscriptions()
    subs.add(1, BTC)
    subs.add(2, SeriesId("binance", "BTCUSDT", "1m"))
    assert subs.pairs_for_source("csv") == [(1, BTC)]


def test_a_subscription_keeps_its_stamp_until_it_ends_and_a_new_one_gets_another() -> None:
    """``since`` tells a reply whether the subscription its request made is the one the
    client holds now (``requests._data_init`` starts the updates only then)."""
    subs = Subscriptions()
    assert subs.since(1, BTC) is None
    subs.add(1, BTC)
    first = subs.since(1, BTC)
    assert first is not None
    subs.add(1, BTC)  # already held: the same subscription
    subs.add(2, BTC)
    subs.add(1, ETH)
    assert subs.since(1, BTC) == first
    subs.remove(1, BTC)
    assert subs.since(1, BTC) is None
    subs.add(1, BTC)
    assert subs.since(1, BTC) not in (None, first)
    subs.drop_client(1)
    assert subs.since(1, BTC) is None and subs.keys_of(1) == frozenset()
