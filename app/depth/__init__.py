"""The depth source: a crypto venue's L2 diff-depth and trade streams to the raw MBO topic.

- `source`: the WebSocket session loop: snapshots, resyncs, reconnects, replacing a connection
  before the venue's age limit, gap records, dead letters, a recording of what it took.
- `venue`: a stand-in for Binance USD-M futures on 127.0.0.1, for tests and the demo.

The books themselves are `tables.depth_sync.DepthSync`; their records, `app.feeds.depth_capture`.
"""
