"""The OpenAPI document of each worker's HTTP views (agents/web.py), served at `/openapi.json`.

Written here by hand, next to nothing it could drift from unseen: a test fetches it from a
running worker, validates it against the OpenAPI 3.1 schema, and calls every path it lists.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from models.ticks import ingest_records

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong, and why"},
        "parameter": {"type": ["string", "null"], "description": "the parameter at fault (400)"},
    },
}
RETRY = {
    "Retry-After": {
        "description": "seconds to wait before asking again",
        "schema": {"type": "integer"},
    }
}
OBJECT = {"type": "object", "additionalProperties": True}


def _version() -> str:
    try:
        return metadata.version("tapestream")
    except metadata.PackageNotFoundError:
        return "unknown"


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or OBJECT}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "a parameter is malformed; the error names it and the rule",
        404: "no such instrument, or nothing of that kind for it",
        503: "the owner of the instrument is not known or not answering yet, or its tables are"
        " being restored; try again after Retry-After",
    }
    out = {str(c): _json(text[c], ERROR) for c in codes}
    if 503 in codes:
        out["503"]["headers"] = RETRY
    return out


def _param(name: str, where: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema,
    }


INSTRUMENT = _param("instrument_id", "path", "the instrument id", {"type": "integer", "minimum": 0})
SCOPE = _param(
    "scope",
    "query",
    "`local`: only this worker's, without asking the others",
    {"type": "string", "enum": ["local"]},
)
LIMIT = _param("limit", "query", "how many, newest first", {"type": "integer", "minimum": 1})
INTERVAL = _param(
    "interval", "query", "a configured bar interval (default: the first)", {"type": "string"}
)
UNITS = _param(
    "units",
    "query",
    "`decimal` (the default): prices in currency units, null for an empty side, and times as"
    " ISO 8601 in UTC to the nanosecond; `raw`: prices in integer units of 1e-9 and times in"
    " integer nanoseconds since the epoch, as on the topics",
    {"type": "string", "enum": ["decimal", "raw"], "default": "decimal"},
)
TIME = {
    "type": "string",
    "description": "nanoseconds since the epoch, or ISO 8601 (`2024-05-08`,"
    " `2024-05-08T13:30:00.5Z`; UTC when no offset is given)",
}
FROM = _param("from", "query", "only those starting at or after this time", TIME)
TO = _param("to", "query", "only those starting before this time", TIME)
SIGNAL_FILTERS = [
    _param("kind", "query", "one kind only (`ifd`, `breakout`, ...)", {"type": "string"}),
    _param("direction", "query", "one side only", {"type": "string", "enum": ["BUY", "SELL"]}),
    _param(
        "min_confidence",
        "query",
        "at least this confidence (signals without one count as 0)",
        {"type": "number", "minimum": 0, "maximum": 1},
    ),
    FROM,
    TO,
]


def _get(summary: str, params: list[dict[str, Any]], ok: str, *errors: int) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": params,
            "responses": {"200": _json(ok), **_errors(*errors)},
        }
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tapestream worker",
            "version": _version(),
            "description": "Live state of the market-data stream processor, served by every"
            " worker; requests for one instrument are answered by the worker that owns it."
            " Prices are decimals and times ISO 8601 unless a request says `units=raw` (the"
            " topics' integers: docs/topics.md).",
        },
        "paths": {
            "/instruments/": _get(
                "every instrument with its record, message and action counts, and its symbol when"
                " a feed named it",
                [SCOPE, UNITS],
                "`instruments`, `count`, `records`; `partial` and `errors` if a worker did not"
                " answer",
            ),
            "/instruments/{instrument_id}/": _get(
                "one instrument's counts", [INSTRUMENT, UNITS], "its counts", 400, 404, 503
            ),
            "/symbols/": _get(
                "the symbology of the feeds that name instruments by symbol (the `symbols` topic)",
                [UNITS],
                "`symbols` (`namespace`, `symbol`, `instrument_id`, `source`, `first_seen_ns`),"
                " `count`",
                503,
            ),
            "/books/": _get(
                "every instrument's books with their best bid and offer",
                [SCOPE, UNITS],
                "`instruments`, `count`",
                503,
            ),
            "/books/{instrument_id}/": _get(
                "the instrument's books: top levels, live orders, counters",
                [
                    INSTRUMENT,
                    _param(
                        "depth",
                        "query",
                        "levels a side (default 10)",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                    ),
                    UNITS,
                ],
                "`books`, one per publisher",
                400,
                404,
                503,
            ),
            "/bars/{instrument_id}/": _get(
                "the instrument's latest closed bars, oldest first, of those the worker keeps"
                " (the last 500)",
                [INSTRUMENT, INTERVAL, LIMIT, FROM, TO, UNITS],
                "`instrument_id`, `interval`, `count`, `bars`",
                400,
                404,
                503,
            ),
            "/indicators/{instrument_id}/": _get(
                "the indicators after the instrument's latest closed bar",
                [INSTRUMENT, INTERVAL, UNITS],
                "`instrument_id`, `interval`, `bars` and each indicator",
                400,
                404,
                503,
            ),
            "/signals/": _get(
                "the latest signals, newest first, from every worker",
                [
                    _param("instrument_id", "query", "one instrument's only", {"type": "integer"}),
                    *SIGNAL_FILTERS,
                    LIMIT,
                    SCOPE,
                    UNITS,
                ],
                "`signals`, `count`",
                400,
            ),
            "/options/": _get(
                "the latest option-group signals, newest first, from every worker",
                [
                    _param("group", "query", "one group's only (`ES|*|*|C`)", {"type": "string"}),
                    *SIGNAL_FILTERS,
                    LIMIT,
                    SCOPE,
                    UNITS,
                ],
                "`signals`, `count`",
                400,
            ),
            "/config/": _get(
                "the runtime settings this worker applies", [], "`caught_up`, `settings`"
            ),
            "/config/{key}": _put_config(),
            "/health": _get(
                "liveness (always 200 while the worker runs), readiness, partitions, recovery",
                [],
                "`ok`, `ready`, `rebalancing`, `active_partitions`, `recovery`",
            ),
            "/ready": _get(
                "readiness: 200 once the worker owns partitions with their tables restored",
                [],
                "`ready`: true, and the recovery's fields",
                503,
            ),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "the text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/ws": {
                "get": {
                    "summary": "the WebSocket feed (docs/web.md#websocket): upgrade, then JSON"
                    " frames: subscribe, a snapshot, numbered updates",
                    "responses": {"101": {"description": "switching to the WebSocket protocol"}},
                }
            },
            "/openapi.json": _get("this document", [], "the OpenAPI 3.1 document"),
            "/": {
                "get": {
                    "summary": "the live dashboard (docs/dashboard.md); its script and style"
                    " sheet are at /dashboard/{name}. Open without a token: the page takes it"
                    " from its URL fragment (/#token=...)",
                    "responses": {
                        "200": {
                            "description": "the page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/ingest/ticks": _ingest(),
        },
        "components": {
            "schemas": INGEST_SCHEMA.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _put_config() -> dict[str, Any]:
    key = _param("key", "path", "a runtime setting (docs/configuration.md)", {"type": "string"})
    why = {
        "400": 'the body is not `{"value": ...}` with a string or a number',
        "401": "no bearer token, or an unknown one (tokens on: docs/web.md#access)",
        "403": "a reader's token: changes take an operator's",
        "404": "no such setting",
        "413": "the body is over the web server's limit (1 MiB)",
        "422": "the value breaks its rule, or the settings as a whole",
        "503": "the control topic did not take the change; try again after Retry-After",
    }
    value = {"type": ["string", "number"]}
    body = {"type": "object", "required": ["value"], "properties": {"value": value}}
    return {
        "put": {
            "summary": "change one runtime setting for every worker, through the control topic",
            "security": [{"bearer": []}, {}],  # an operator's token when tokens are on
            "parameters": [key],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": _json("`key`, `old`, `new`"),
                **{code: _json(text, ERROR) for code, text in why.items()},
            },
        }
    }


# The webhook's body, from the models that check it (app/tick_ingest.py).
INGEST_SCHEMA = ingest_records.json_schema(ref_template="#/components/schemas/{model}")


def _ingest() -> dict[str, Any]:
    why = {
        "400": "the body is not JSON",
        "401": "no bearer token, or not the one this worker accepts (WWW-Authenticate says how)",
        "404": "ingest is off on this worker (TAPESTREAM_INGEST_TOKEN is not set)",
        "413": "the body is over TAPESTREAM_INGEST_MAX_BYTES, or one instrument's records of it"
        " would not fit one message",
        "422": "a record is wrong: `errors` lists each with its index, field and reason; nothing"
        " of the request was sent",
        "503": "the broker did not take every instrument's records: retry the same request"
        " after Retry-After (what was written comes back as repeats of its sequence numbers)",
    }
    responses = {
        "200": _json("what it became: ticks, records, instruments, excluded_trades, duplicates"),
        **{code: _json(text, ERROR) for code, text in why.items()},
    }
    responses["503"]["headers"] = RETRY
    schema = {k: v for k, v in INGEST_SCHEMA.items() if k != "$defs"}
    return {
        "post": {
            "summary": "vendor ticks pushed to the raw topic (docs/ticks.md#webhook-ingest);"
            " needs `Authorization: Bearer <TAPESTREAM_INGEST_TOKEN>`",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            },
            "responses": responses,
        }
    }
