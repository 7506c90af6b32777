"""End to end: the symbols populate stores are those the server can serve, whatever their
names: a name longer than a request may name, text UTF-8 cannot hold, a ``source:name`` of
the OpenBB live grid as long as its two parts may be, and labels in scripts written without
spaces between words."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.symbols import rows
from backend.wire import protocol
from tests.harness import ServerProcess, WsClient, base_env, populate

EXTRA = "named=tests.providers:NamedProvider"
FITS = "L" * protocol.MAX_FIELD_CHARS  # the longest name a request may name
TOO_LONG = "M" * (protocol.MAX_FIELD_CHARS + 1)


def named_env(tmp: Path, pairs: list[tuple[str, str]]) -> dict[str, str]:
    env = base_env(tmp, PROVIDERS="named", CANDLEWIRE_TEST_NAMES=json.dumps(pairs))
    env["EXTRA_PROVIDERS"] = f"{env['EXTRA_PROVIDERS']},{EXTRA}"
    return env


@pytest.fixture
def long_names(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    env = named_env(tmp_path, [("AAA", "A"), (FITS, "fits"), (TOO_LONG, "too long")])
    result = populate(env)
    assert result.returncode == 0, result.stderr
    with ServerProcess(env, tmp_path / "server.log") as server:
        yield server, result.stderr


def names(server: ServerProcess, query: str) -> list[str]:
    found: dict[str, Any] = server.get(f"/api/symbols?q={urllib.parse.quote(query)}")
    return [row["name"] for row in found["results"]]


async def test_every_symbol_search_offers_can_be_charted_over_the_websocket(
    long_names: tuple[ServerProcess, str],
) -> None:
    """A name of 201 to 256 characters was stored and offered by every search, but a
    ``data`` request naming it was refused (``'name' must be a string of 1 to 200
    characters``): the chart of the result the user picked stayed empty. Populate now skips
    such a row, saying why, as the other rows it cannot store."""
    server, log = long_names
    offered = names(server, "L") + names(server, "M")
    client = await WsClient.open(server.ws_url)
    try:
        for name in offered:
            await client.send({"type": "data", "source": "named", "name": name, "interval": "1d"})
            echoed = name[: protocol.MAX_FIELD_CHARS]  # an echo is clipped so (README)
            init = await client.wait_for("data_init", lambda m, n=echoed: m.get("name") == n)
            assert not client.of_type("error") and init["data"], client.of_type("error")
    finally:
        await client.close()
    assert offered == [FITS]
    assert "longer than 200 characters" in log
    assert rows.MAX_NAME_LENGTH == protocol.MAX_FIELD_CHARS


def test_a_row_with_text_utf8_cannot_hold_is_skipped_not_the_whole_provider(
    tmp_path: Path,
) -> None:
    """A lone surrogate (what Python makes of a file name that is not UTF-8, or of a JSON
    ``\\udce9`` escape) in a row's name or name_label passed the row checks, and SQLite
    refused it: ``FAILED ... StorageError: ... surrogates not allowed``, none of the
    provider's symbols stored. Now such a name skips its row, with the others' warning,
    and such a label is stored with "?" in its place."""
    pairs = [("GOOD", "Good Inc"), ("BAD\udce9", "Bad"), ("LBL", "Soci\udce9t\udce9 Inc")]
    env = named_env(tmp_path, pairs)
    result = populate(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "named: 2 rows" in result.stdout
    assert "skipped invalid row 'BAD\\udce9'" in result.stderr
    with ServerProcess(env, tmp_path / "server.log") as server:
        assert names(server, "good") == ["GOOD"]
        found = server.get("/api/symbols?q=LBL")["results"]
        assert [row["details"]["name_label"] for row in found] == ["Soci?t? Inc"]
        assert names(server, "soci") == ["LBL"]
        assert names(server, "bad") == []


def test_the_openbb_live_grid_takes_a_source_and_name_as_long_as_they_may_be(
    long_names: tuple[ServerProcess, str],
) -> None:
    """The grid cut each ``symbol`` to 200 characters, a ``source:name`` with it: the row
    of a name of 195 to 200 characters said ``unknown symbol`` under a clipped id, which
    matched no symbol Workspace asked for."""
    server, _ = long_names
    wanted = f"named:{FITS}"
    rows_ = server.get(f"/openbb/live_grid?symbol={urllib.parse.quote(wanted)}")
    assert [(row["symbol"], row["error"]) for row in rows_] == [(wanted, None)]
    assert rows_[0]["price"] is not None


CJK = [
    ("600519.SS", "贵州茅台"),  # Kweichow Moutai: "茅台" to everyone
    ("7203.T", "トヨタ自動車"),  # Toyota Motor: "自動車" is "motor car"
    ("005930.KS", "삼성전자"),  # Samsung Electronics: "전자" is "electronics"
    ("2330.TW", "台灣積體電路製造"),  # TSMC
]


@pytest.mark.parametrize(
    ("query", "first"),
    [("茅台", "600519.SS"), ("自動車", "7203.T"), ("전자", "005930.KS"), ("積體電路", "2330.TW"),
     ("贵州", "600519.SS"), ("トヨタ", "7203.T")],
)  # fmt: skip
def test_a_word_inside_a_label_in_chinese_japanese_or_korean_finds_it(
    cjk_server: ServerProcess, query: str, first: str
) -> None:
    """These scripts write words without spaces between them: the full-text index took a
    whole label for one word, so only its beginning was found ("贵州" found Kweichow
    Moutai, "茅台", its name to everyone, found nothing)."""
    assert names(cjk_server, query)[:1] == [first]
    found = cjk_server.get(f"/udf/search?query={urllib.parse.quote(query)}")
    assert [item["symbol"] for item in found][:1] == [first]


@pytest.fixture(scope="module")
def cjk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("cjk")
    env = named_env(tmp, CJK)
    result = populate(env)
    assert result.returncode == 0, result.stderr
    with ServerProcess(env, tmp / "server.log") as server:
        yield server
