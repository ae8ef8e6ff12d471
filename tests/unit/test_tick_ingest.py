"""The webhook's rules without a broker: the token, the checks of a body, what the books keep
of a request, and a request the broker cannot take undone (a retry is then sent whole)."""

from __future__ import annotations

import orjson
import pytest

from app.access import AccessError
from app.settings import load_settings
from app.tick_ingest import Answer, TickIngest, token_from_env, validated
from models.ticks import TickTrade

PX = 1_000_000_000
T0 = 1_700_000_000_000_000_000


TOKEN = "s3cret-token-0123456789"


def _ingest(token: str | None = TOKEN, **env: str) -> TickIngest:
    settings = load_settings({"KAFKA_BROKER": "kafka://127.0.0.1:1", **env})
    return TickIngest(settings, "mbo.raw", token.encode() if token else None)


def _body(*records: dict) -> bytes:
    return orjson.dumps(list(records))


def _trade(seq: int, price: int = 100 * PX, **more: object) -> dict:
    return {"kind": "trade", "symbol": "AAPL", "ts_event": T0 + seq, "sequence": seq,
            "price": price, "size": 10, **more}  # fmt: skip


def test_off_without_a_token_and_the_token_checked() -> None:
    off = _ingest(None)
    assert not off.on and off.authorised(f"Bearer {TOKEN}").status == 404  # type: ignore[union-attr]
    on = _ingest()
    assert on.authorised(f"Bearer {TOKEN}") is None
    assert on.authorised(f"bearer  {TOKEN} ") is None
    bad = (
        "",
        "Basic " + TOKEN,
        "Bearer",
        "Bearer " + TOKEN[:-1],
        "Bearer " + TOKEN + "2",
        "Bearer \udcff\udcfe",
    )  # fmt: skip  (bytes that are not UTF-8, as aiohttp gives them)
    for header in (None, *bad):
        answer = on.authorised(header)
        assert answer is not None and answer.status == 401, header
        assert TOKEN not in orjson.dumps(answer.body).decode()
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("value", ["short", "two-tokens-0123456789,another-one-0123456789"])
def test_a_bad_ingest_token_is_refused_without_showing_it(value: str) -> None:
    with pytest.raises(AccessError) as exc:
        token_from_env({"TAPESTREAM_INGEST_TOKEN": value})
    assert value not in str(exc.value)
    assert token_from_env({"TAPESTREAM_INGEST_TOKEN": f" {TOKEN}\n"}) == TOKEN.encode()
    assert token_from_env({}) is None


def test_a_body_over_the_limit_is_refused_before_it_is_read() -> None:
    ingest = _ingest(TAPESTREAM_INGEST_MAX_BYTES="2048")
    assert ingest.too_large(2048) is None
    answer = ingest.too_large(2049)
    assert answer is not None and answer.status == 413 and "2048" in answer.body["error"]
    assert ingest.over_limit().status == 413


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"", 400, None),
        (b"[1,", 400, None),
        (b'{"kind": "trade"}', 422, None),
        (_body(_trade(1), _trade(2, price=-5)), 422, "price"),
        (_body(_trade(1, price=100.5)), 422, "price"),  # a float is not the fixed point
        (_body(_trade(1, size=True)), 422, "size"),
        (_body(_trade(1, symbol="aapl")), 422, "symbol"),
        (_body(_trade(1, aggressor="X")), 422, "aggressor"),
        (_body(_trade(1, extra=1)), 422, "extra"),
        (_body(_trade(1, conditions=["12"])), 422, "conditions.0"),
        (_body(_trade(1, instrument_id=1)), 422, "instrument_id"),
        (_body({**_trade(1), "kind": "bar"}), 422, None),
    ],
)
def test_a_bad_body_says_where_and_why(body: bytes, status: int, field: str | None) -> None:
    answer = validated(body)
    assert isinstance(answer, Answer) and answer.status == status, answer
    if status == 422 and field is not None:
        assert answer.body["errors"][0]["field"] == field, answer.body


def test_a_good_body_is_normalised_with_its_instrument() -> None:
    ticks = validated(_body(_trade(1, conditions=[37], aggressor="A")))
    assert isinstance(ticks, list) and isinstance(ticks[0], TickTrade)
    t = ticks[0]
    assert t.instrument_id > 0 and t.conditions == (37,) and t.aggressor == "A"
    assert t.venue == 0 and t.trade_id == ""  # optional when pushed


async def test_a_request_the_broker_cannot_take_is_undone_so_a_retry_is_whole() -> None:
    ingest = _ingest()
    first = validated(_body(_trade(1), _trade(2, price=101 * PX)))
    assert isinstance(first, list)
    answer = await ingest.take(first, T0)
    assert answer.status == 503 and answer.headers["Retry-After"]
    assert answer.body["unsent_instruments"] == [first[0].instrument_id]
    # the books are as if the request had never come: the same ticks are not repeats
    assert ingest.books.sequences == {} and ingest.books.state == {}
    ingest.books.add(first[0], T0)
    ingest.books.add(first[1], T0)
    assert ingest.books.duplicates == 0 and len(ingest.books.take()) == 2
    await ingest.stop()


def test_the_vendors_aggressor_wins_over_the_rules() -> None:
    from app.feeds.tick_capture import TickBooks

    books = TickBooks()
    ticks = validated(
        _body(_trade(1), _trade(2, price=99 * PX, aggressor="B"), _trade(3, price=99 * PX))
    )
    assert isinstance(ticks, list)
    for t in ticks:
        books.add(t, T0)
    sides = [chr(r["side"]) for r in books.take()]
    # no quote: the tick rule (N, nothing before it); the vendor's B; then the zero tick
    # after it carries the vendor's side on
    assert sides == ["N", "B", "B"]


def test_requests_taken_out_of_order_lose_nothing_and_a_retry_adds_nothing() -> None:
    from app.feeds.tick_capture import TickBooks

    books = TickBooks()
    early = validated(_body(_trade(1), _trade(2, price=101 * PX)))
    late = validated(_body(_trade(3, price=102 * PX), _trade(4)))
    assert isinstance(early, list) and isinstance(late, list)
    for t in (*late, *early, *late, *early):  # the later request first, then both again
        books.add(t, T0)
    assert len(books.take()) == 4 and books.duplicates == 4
