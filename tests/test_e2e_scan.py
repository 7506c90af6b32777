"""End to end: the scanner over the Tradiny wire format (spec tradiny-extensions.md 4).

The real server.py with the ``counting`` provider process (symbols AAA, BBB, CCC and HANG,
whose history never comes: the scan skips it after ``HISTORY_TIMEOUT``); a real client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ServerProcess, WsClient, populated_server

TEMPLATE = {"data": [{"type": "data", "source": "counting", "name": "AAA", "interval": "1h"}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("scan")
    with populated_server(tmp, PROVIDERS="counting", HISTORY_TIMEOUT="2") as running:
        yield running


def close_rule(comparator: str, value: float, interval: str = "1h") -> dict[str, str]:
    """``close <comparator> value`` on the template symbol, every value a string."""
    return {
        "type1": "data",
        "source1": "counting",
        "name1": "AAA",
        "interval1": interval,
        "key1": "close",
        "comparator": comparator,
        "type2": "value",
        "value2": str(value),
    }


def rsi_entry() -> dict[str, Any]:
    chart_id = "talib-momentum-RSI_timeperiod-14_close-counting-AAA-1h-close"
    return {
        "indicator": {
            "type": "indicator",
            "id": chart_id,
            "indicator": {"id": "talib.momentum.RSI", "name": "RSI", "type": "indicator"},
            "inputs": {"timeperiod": "14"},
            "dataMap": {
                "close": {
                    "source": "counting",
                    "name": "AAA",
                    "interval": "1h",
                    "value": "counting-AAA-1h-close",
                    "dataKey": "close",
                }
            },
        },
        "outputs": [{"name": "RSI", "y_axis": "rsi"}],
    }


def rsi_rule(period: int = 14) -> tuple[dict[str, str], dict[str, Any]]:
    """A rule ``RSI(period) > 0`` on the template symbol, and its ``indicators`` map."""
    entry = rsi_entry()
    entry["indicator"]["inputs"] = {"timeperiod": str(period)}
    label = f"RSI timeperiod={period}"
    rule = {
        "type1": "indicator",
        "indicator1": label,
        "indicator_interval1": "1h",
        "output1": "RSI",
        "comparator": ">",
        "type2": "value",
        "value2": "0",
    }
    return rule, {label: entry}


def scan(
    rules: list[Any], search: str = "test", operators: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "scan",
        "search": search,
        "rules": rules,
        "operators": operators if operators is not None else ["and"] * (len(rules) - 1),
        "indicators": {},
        "dataProviderConfig": TEMPLATE,
        **extra,
    }


async def finished(client: WsClient, after: int = 0, timeout: float = 20) -> dict[str, Any]:
    return await client.wait_for("scan_done", after=after, timeout=timeout)


async def test_a_scan_reports_each_matching_symbol_then_ends_with_done(
    client: WsClient,
) -> None:
    await client.send(scan([close_rule(">", 0)]))
    done = await finished(client)
    assert done == {"type": "scan_done", "scanned": 3, "matched": 3, "total": 4, "stopped": False}
    results = client.of_type("scan_result")
    assert sorted(r["data"]["name"] for r in results) == ["AAA", "BBB", "CCC"]
    row = results[0]
    assert row["data"]["type"] == "data" and isinstance(row["data"]["details"]["categories"], list)
    assert set(row["data_values"]) == {"close"} and row["data_values"]["close"] > 0
    progress = [m["message"] for m in client.of_type("scan_progress")]
    assert [p for p in progress if p.startswith("Scanning")] == sorted(
        f"Scanning {i}/4" for i in range(1, 5)
    )
    assert progress[-1] == "Done: 3 of 4 matched"
    last = client.messages.index(done)
    assert client.messages[last - 1]["message"] == "Done: 3 of 4 matched"


async def test_a_scan_without_matches_still_says_it_is_done(client: WsClient) -> None:
    await client.send(scan([close_rule("<", 0), close_rule(">", 1e9)], operators=["or"]))
    done = await finished(client)
    assert done["matched"] == 0 and done["scanned"] == 3 and not done["stopped"]
    assert client.of_type("scan_result") == []
    assert client.of_type("scan_progress")[-1]["message"] == "Done: 0 of 4 matched"


async def test_a_scan_on_an_indicator_rule_rebinds_it_to_each_symbol(client: WsClient) -> None:
    rule, indicators = rsi_rule()
    await client.send(scan([rule], indicators=indicators))
    done = await finished(client)
    assert done["matched"] == 3
    results = client.of_type("scan_result")
    values = [next(iter(r["data_values"].values())) for r in results]
    assert all(0 < v < 100 for v in values)
    assert len(set(values)) == 3  # each symbol its own RSI, not the template's


@pytest.mark.parametrize(
    "config",
    [
        {"data": [{"source": "counting", "name": "AAA", "interval": "1h"}]},  # no "type"
        None,  # no dataProviderConfig: the one symbol the rules read is the template
    ],
    ids=["items without a type", "no dataProviderConfig"],
)
async def test_a_scan_finds_its_template_without_typed_items(
    client: WsClient, config: dict[str, Any] | None
) -> None:
    rule, indicators = rsi_rule()
    request = scan([rule], indicators=indicators)
    if config is None:
        del request["dataProviderConfig"]
    else:
        request["dataProviderConfig"] = config
    await client.send(request)
    done = await finished(client)
    assert done["matched"] == 3
    values = [next(iter(r["data_values"].values())) for r in client.of_type("scan_result")]
    assert len(set(values)) == 3  # each symbol its own RSI, not the template's


async def test_a_scan_of_rules_over_several_symbols_needs_the_template_named(
    client: WsClient,
) -> None:
    other = close_rule(">", 0) | {"name1": "BBB"}
    request = scan([close_rule(">", 0), other])
    del request["dataProviderConfig"]
    await client.send(request)
    error = await client.wait_for("error")
    assert error["code"] == "bad_rule" and "dataProviderConfig" in error["message"]
    done = await finished(client, timeout=5)
    assert done["stopped"] and done["total"] == 0


async def test_two_scans_in_one_frame_end_one_after_the_other(client: WsClient) -> None:
    """The first scan's last messages ("Stopped: ...", scan_done) come before any of the
    second's, so a client reading up to scan_done reads one scan."""
    await client.send(scan([close_rule(">", 0)]), scan([close_rule(">", 0)], search="aaa"))
    await client.wait_for("scan_done", lambda m: not m["stopped"])
    kinds = [m for m in client.messages if m.get("type") in ("scan_progress", "scan_done")]
    ends = [i for i, m in enumerate(kinds) if m["type"] == "scan_done"]
    assert len(ends) == 2
    first, second = kinds[: ends[0] + 1], kinds[ends[0] + 1 :]
    assert first[-1]["stopped"] is True
    assert [m["message"] for m in second if m["type"] == "scan_progress"] == [
        "Scanning 1/1",
        "Done: 1 of 1 matched",
    ]


async def test_scan_stop_ends_the_scan_at_once(client: WsClient) -> None:
    # HANG alone: its history never comes, so the scan is still running when stopped.
    await client.send(scan([close_rule(">", 0)], search="hang"))
    await client.wait_for("scan_progress")
    await client.send({"type": "scan_stop"})
    done = await finished(client, timeout=1.5)  # well before HISTORY_TIMEOUT
    assert done["stopped"] is True and done["scanned"] == 0
    assert client.of_type("scan_progress")[-1]["message"].startswith("Stopped")
    await client.send({"type": "ping", "id": "after"})
    await client.wait_for("pong")


async def test_a_new_scan_replaces_the_running_one(client: WsClient) -> None:
    await client.send(scan([close_rule(">", 0)], search="hang"))
    await client.wait_for("scan_progress")
    await client.send(scan([close_rule(">", 0)], search="aaa"))
    await client.wait_for("scan_done", lambda m: m["stopped"])
    done = await client.wait_for("scan_done", lambda m: not m["stopped"])
    assert done["matched"] == 1


HOSTILE: list[tuple[str, Any]] = [
    ("python in the comparator", [close_rule("__import__('os').system('id')", 0)]),
    ("an unknown operator", [close_rule(">", 0), close_rule("<", 1)]),
    ("rules that are not a list", "close > 0"),
    ("a rule that is a number", [7]),
    ("no rules at all", []),
    ("a value that is not a number", [close_rule(">", 0) | {"value2": "1e999"}]),
    ("an unknown type", [close_rule(">", 0) | {"type1": "eval"}]),
    ("a field that is not a bar field", [close_rule(">", 0) | {"key1": "__class__"}]),
    ("an unknown interval", [close_rule(">", 0) | {"interval1": "7x"}]),
    ("an indicator label not in the map", [close_rule(">", 0) | {"type1": "indicator"}]),
    ("thousands of rules", [close_rule(">", 0)] * 5000),
]


@pytest.mark.parametrize(("what", "rules"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_rules_get_an_error_and_an_ended_scan(
    client: WsClient, what: str, rules: Any
) -> None:
    operators = ["xor"] if what == "an unknown operator" else None
    request = scan(rules if isinstance(rules, list) else [], operators=operators)
    if not isinstance(rules, list):
        request["rules"] = rules
    await client.send(request)
    error = await client.wait_for("error")
    assert error["code"] in ("bad_rule", "invalid_field"), error
    done = await finished(client, timeout=5)
    assert done["stopped"] and done["total"] == 0
    assert client.of_type("scan_result") == []
    await client.send({"type": "ping", "id": what})
    await client.wait_for("pong")
    assert len(json.dumps(error)) < 4096  # the echo is bounded


def server_log(server: ServerProcess) -> str:
    return Path(server.log_path).read_text()


UNSERVABLE: list[tuple[str, dict[str, str], str]] = [
    (
        "an unknown symbol",
        close_rule(">", 0) | {"name1": "NOPE\nforged log line"},
        "unknown_symbol",
    ),
    ("an unknown source", close_rule(">", 0) | {"source1": "nowhere"}, "unknown_source"),
]


@pytest.mark.parametrize(("what", "rule", "code"), UNSERVABLE, ids=[u[0] for u in UNSERVABLE])
async def test_a_rule_on_a_series_that_cannot_be_served_is_refused_before_the_scan(
    client: WsClient, server: ServerProcess, what: str, rule: dict[str, str], code: str
) -> None:
    """Not the template symbol (each symbol replaces that one): the same series for every
    symbol, so no symbol could be scanned. Refused at once, no provider asked."""
    await client.send(scan([close_rule(">", 0), rule]))
    error = await client.wait_for("error")
    assert error["code"] == code, error
    done = await finished(client, timeout=5)
    assert done["stopped"] and done["total"] == 0
    assert client.of_type("scan_progress")[-1]["message"].startswith("Error: ")
    assert "forged log line" not in server_log(server)


async def test_a_rule_on_an_indicator_longer_than_a_request_may_load_is_refused(
    client: WsClient,
) -> None:
    """RSI(100000) needs about 350,000 bars of warm-up: refused like ``indicator`` refuses
    it, not loaded and computed for every symbol."""
    rule, indicators = rsi_rule(100_000)
    await client.send(scan([rule], indicators=indicators))
    error = await client.wait_for("error")
    assert error["code"] == "not_enough_history", error
    assert "at most 10000" in error["message"]
    done = await finished(client, timeout=5)
    assert done["stopped"] and done["total"] == 0


async def test_a_rule_on_an_output_its_indicator_does_not_have_is_refused(
    client: WsClient,
) -> None:
    """RSI has one output, "RSI": a rule on "macd" has a value for no symbol. It was
    scanned, silently matching nothing; now it is a ``bad_rule`` naming the outputs."""
    rule, indicators = rsi_rule()
    await client.send(scan([rule | {"output1": "macd"}], indicators=indicators))
    error = await client.wait_for("error")
    assert error["code"] == "bad_rule", error
    assert "'macd'" in error["message"] and "RSI" in error["message"]
    done = await finished(client, timeout=5)
    assert done["stopped"] and done["total"] == 0
    assert client.of_type("scan_result") == []


async def test_a_universe_over_the_providers_history_budget_is_scanned_at_its_pace(
    tmp_path: Path,
) -> None:
    """The Tradiny Filters window over more symbols than one window of the provider's
    history budget (here 2 calls per 5 s): the symbols refused for the rate are tried again
    when the budget allows, not skipped (400 Binance pairs scanned 100, "Done: 0 of 400
    matched" while most matched). HANG never answers and is skipped after HISTORY_TIMEOUT."""
    with populated_server(
        tmp_path, PROVIDERS="counting", HISTORY_TIMEOUT="2", PROVIDER_CALLS_PER_SECOND="0.4"
    ) as running:
        client = await WsClient.open(running.ws_url)
        try:
            await client.send(scan([close_rule(">", 0)]))
            done = await finished(client, timeout=40)
        finally:
            await client.close()
    assert done == {"type": "scan_done", "scanned": 3, "matched": 3, "total": 4, "stopped": False}
    assert sorted(r["data"]["name"] for r in client.of_type("scan_result")) == ["AAA", "BBB", "CCC"]
    assert client.of_type("scan_progress")[-1]["message"] == "Done: 3 of 4 matched"
