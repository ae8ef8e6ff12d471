"""The ticks source: a tick vendor's trades and quotes to the raw MBO topic.

- `source`: the WebSocket session loop: login, subscriptions, reconnects with gap records, dead
  letters, a recording of what it took.
- `vendor`: a stand-in for the Massive (formerly Polygon.io) stocks WebSocket on 127.0.0.1.

The events and their records: `models.ticks`, `tables.tick_rules`, `app.feeds.tick_capture`.
"""
