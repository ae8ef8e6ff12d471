"""Normalised vendor ticks: what a tick feed's trades and quotes are once they have passed the
edge, whatever the vendor. Validated with pydantic, strictly: a wrong type is an error, never a
coercion. Prices are the MBO fixed point (units of 1e-9), times nanoseconds since the epoch.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Symbol = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9.\-]{0,19}$")]
Price = Annotated[int, Field(ge=0, lt=1 << 62)]
Nanos = Annotated[int, Field(gt=0, lt=1 << 63)]
Count = Annotated[int, Field(ge=0, lt=1 << 32)]


class _Tick(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    symbol: Symbol
    instrument_id: Annotated[int, Field(ge=0, lt=1 << 31)]  # models.mbo.instrument_id_for
    ts_event: Nanos
    sequence: Annotated[int, Field(ge=0, lt=1 << 63)]  # the vendor's, increasing per symbol


class TickTrade(_Tick):
    kind: Literal["trade"] = "trade"
    venue: Count  # the vendor's exchange id
    price: Annotated[int, Field(gt=0, lt=1 << 62)]
    size: Annotated[int, Field(gt=0, lt=1 << 32)]
    trade_id: Annotated[str, Field(max_length=64)]
    conditions: tuple[int, ...] = ()
    # set by the source from the quote and tick rules (tables/tick_rules.py): B, A or N
    aggressor: Literal["B", "A", "N"] = "N"


class TickQuote(_Tick):
    kind: Literal["quote"] = "quote"
    bid_venue: Count
    bid_px: Price  # 0: no bid
    bid_sz: Count
    ask_venue: Count
    ask_px: Price  # 0: no offer
    ask_sz: Count
    condition: Count = 0


Tick = TickTrade | TickQuote


class _Ingested:
    """A record posted to the webhook (app/tick_ingest.py): `kind` says which, the instrument
    id may be left out (the symbology gives it; one given must agree)."""

    instrument_id: int | None
    as_tick: ClassVar[type[Tick]]

    def normalised(self, instrument_id: int) -> Tick:
        fields = self.model_dump()  # type: ignore[attr-defined]
        fields["instrument_id"] = instrument_id
        return self.as_tick.model_construct(**fields)


class IngestTrade(_Ingested, TickTrade):
    kind: Literal["trade"]
    instrument_id: Annotated[int, Field(ge=0, lt=1 << 31)] | None = None
    sequence: Annotated[int, Field(ge=0, lt=1 << 63)] = 0  # 0: none: a retry may repeat
    venue: Count = 0
    trade_id: Annotated[str, Field(max_length=64)] = ""
    as_tick: ClassVar[type[Tick]] = TickTrade


class IngestQuote(_Ingested, TickQuote):
    kind: Literal["quote"]
    instrument_id: Annotated[int, Field(ge=0, lt=1 << 31)] | None = None
    sequence: Annotated[int, Field(ge=0, lt=1 << 63)] = 0
    bid_venue: Count = 0
    ask_venue: Count = 0
    as_tick: ClassVar[type[Tick]] = TickQuote


# A webhook request's body: a JSON array of trades and quotes, told apart by `kind`.
ingest_records: TypeAdapter[list[IngestTrade | IngestQuote]] = TypeAdapter(
    list[Annotated[IngestTrade | IngestQuote, Field(discriminator="kind")]]
)
