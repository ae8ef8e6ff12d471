"""The symbology table: stable ids for feeds without their own, and a second name on an id
refused, whichever process met it, in whatever order the table was written."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.feeds.depth_capture import instrument_for as depth_id
from app.feeds.mbo_files import InputError, open_mbo
from app.feeds.tick_capture import instrument_for as tick_id
from tables.symbology import Entry, SymbolCollision, Symbology

# Two tickers whose CRC-31 ids in US-EQUITY are the same (found by search; checked below).
ONE, OTHER = "W1EXHT", "SSIUEYF4Q"


def test_ids_are_the_feeds_own_and_the_pair_collides() -> None:
    table = Symbology()
    aapl, new = table.add("US-EQUITY", "AAPL", "ticks", 1)
    assert new and aapl.instrument_id == tick_id("AAPL")
    btc, _ = table.add("BINANCE-USDM", "BTCUSDT", "depth", 2)
    assert btc.instrument_id == depth_id("btcusdt")
    assert table.add("US-EQUITY", "AAPL", "ingest", 3) == (aapl, False)  # the first stays
    assert tick_id(ONE) == tick_id(OTHER)


def test_a_second_name_on_an_id_is_refused_with_both_names() -> None:
    table = Symbology()
    held, _ = table.add("US-EQUITY", ONE, "ticks", 1)
    with pytest.raises(SymbolCollision) as exc:
        table.add("US-EQUITY", OTHER, "ingest", 2)
    assert ONE in str(exc.value) and OTHER in str(exc.value)
    assert table.get(held.instrument_id) == held and len(table) == 1


def test_written_by_two_at_once_the_first_in_the_log_keeps_the_id() -> None:
    first = Entry("US-EQUITY", OTHER, tick_id(OTHER), "ticks", 20)
    second = Entry("US-EQUITY", ONE, tick_id(ONE), "ingest", 10)  # its clock was behind
    for order in ([first, second], [second, first]):
        table = Symbology(Entry.from_json(e.as_json()) for e in order)
        assert table.get(tick_id(ONE)) == order[0] and len(table.refused) == 1
        loser = order[1].symbol
        with pytest.raises(SymbolCollision):
            table.add("US-EQUITY", loser, "ingest", 30)


def test_an_entry_whose_id_is_not_its_names_is_not_read() -> None:
    body = Entry("US-EQUITY", "AAPL", tick_id("AAPL") + 1, "x", 1).as_json()
    with pytest.raises(ValueError, match="is not instrument"):
        Entry.from_json(body)


def test_forgotten_entries_free_their_id() -> None:
    table = Symbology()
    entry, _ = table.add("US-EQUITY", ONE, "ticks", 1)
    table.forget([entry])
    assert table.add("US-EQUITY", OTHER, "ticks", 2)[1]


def test_a_capture_holding_both_names_of_an_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.ticks.jsonl"
    lines = [
        f'1700000000000000000 [{{"ev":"T","sym":"{sym}","x":4,"p":10.5,"s":100,"t":1700000000000,'
        f'"q":{q},"c":[]}}]'
        for q, sym in enumerate((ONE, OTHER), start=1)
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="share instrument id"):
        list(open_mbo(path).chunks())
