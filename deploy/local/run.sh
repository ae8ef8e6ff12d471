#!/usr/bin/env bash
# `make run`: a local broker, one worker, the sample replayed at its recorded pace, web views up.
# `SOURCE=live make run`: the sample served by the stand-in Databento gateway instead, and read
# by the live source (`faust -A app live`), as a live feed would be; no key needed.
# `SOURCE=depth make run`: the real BTCUSDT depth capture served by the stand-in Binance venue
# and read by the depth source (`faust -A app depth`) into L2 books.
# Ctrl-C stops the worker (and the broker, if this script started it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

export TAPESTREAM_APP_ID=${TAPESTREAM_APP_ID:-tapestream-demo}
export TAPESTREAM_TOPIC_PREFIX=${TAPESTREAM_TOPIC_PREFIX:-demo.}
export TAPESTREAM_DATA_DIR=${TAPESTREAM_DATA_DIR:-var/demo/state}
export TAPESTREAM_WEB_PORT=${TAPESTREAM_WEB_PORT:-6066}
SAMPLE=${SAMPLE:-var/sample/sample.mbo.dbn.zst}
SPEED=${SPEED:-1}
SOURCE=${SOURCE:-replay}
GATEWAY_PORT=${GATEWAY_PORT:-13000}
VENUE_PORT=${VENUE_PORT:-18801}
CAPTURE=${CAPTURE:-../shared/data/binance/usdm-btcusdt-2024-08-08.depth-trades.gz}
case "$SOURCE" in replay|live|depth) ;; *) echo "SOURCE must be replay, live or depth, not $SOURCE" >&2; exit 2;; esac
url="http://127.0.0.1:$TAPESTREAM_WEB_PORT"
mkdir -p var/demo

was_up=0
bash deploy/local/kafka.sh status && was_up=1
bash deploy/local/kafka.sh start
bootstrap=${KAFKA_BROKER:-127.0.0.1:${KAFKA_PORT:-9092}}
bootstrap=${bootstrap#kafka://}
export KAFKA_BROKER="kafka://$bootstrap"

worker=
feed=()
cleanup() {
  set +e  # a worker stopped by its signal exits non-zero; the broker must still be stopped
  for pid in "${feed[@]}" $worker; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  [ "$was_up" = 1 ] || bash deploy/local/kafka.sh stop
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$SOURCE" != depth ] && [ ! -f "$SAMPLE" ]; then
  echo "generating the sample: 1M MBO records, 50 instruments ($SAMPLE)"
  python -m load_tests.gen_mbo --out "$SAMPLE" --records 1000000 --instruments 50 --rate 2000
fi

rm -rf "$TAPESTREAM_DATA_DIR"
python deploy/local/demo_reset.py "$bootstrap" "$TAPESTREAM_APP_ID" "$TAPESTREAM_TOPIC_PREFIX"

faust -A app worker -l info >var/demo/worker.log 2>&1 &
worker=$!
echo "worker starting (log: var/demo/worker.log)"
for _ in $(seq 1 120); do
  curl -sf "$url/health" >/dev/null 2>&1 && break
  kill -0 "$worker" 2>/dev/null || { tail -n 40 var/demo/worker.log; exit 1; }
  sleep 0.5
done

one=1000
if [ "$SOURCE" = depth ]; then
  one=$(python -c 'from app.feeds.depth_capture import instrument_for; print(instrument_for("BTCUSDT"))')
fi
cat <<MSG

  tapestream is up. The live dashboard: $url/
  Web views (they change as the feed runs):
    $url/books/                every instrument's best bid and offer
    $url/books/$one/?depth=10  one instrument's top 10 levels a side
    $url/instruments/          record and action counts per instrument
    $url/instruments/$one/     one instrument
    $url/bars/$one/            its latest 1-minute bars
    $url/openapi.json          the documented API
    $url/metrics               Prometheus metrics
    $url/health                worker status

MSG
if [ "$SOURCE" = depth ]; then
  if [ -f "$CAPTURE" ]; then
    venue=(--capture "$CAPTURE" --speed "$SPEED"); symbols=BTCUSDT; stream=depth@0ms
  else  # no shared data beside the project: a generated market instead
    venue=(--symbols BTCUSDT --rate 200); symbols=BTCUSDT; stream=depth@100ms
  fi
  faust -A app depth-venue "${venue[@]}" --port "$VENUE_PORT" >var/demo/venue.log 2>&1 &
  feed+=($!)
  for _ in $(seq 1 60); do  # the venue's port, before the source's first connection
    curl -sf "http://127.0.0.1:$VENUE_PORT/status" >/dev/null 2>&1 && break
    sleep 0.5
  done
  faust -A app depth --symbols "$symbols" --depth-stream "$stream" \
    --ws-url "ws://127.0.0.1:$VENUE_PORT" --rest-url "http://127.0.0.1:$VENUE_PORT" \
    --web-port $((TAPESTREAM_WEB_PORT + 1)) >var/demo/depth.log 2>&1 &
  feed+=($!)
  echo "  The stand-in venue serves BTCUSDT depth and trades at ${SPEED}x; the depth source keeps"
  echo "  its L2 book (status: http://127.0.0.1:$((TAPESTREAM_WEB_PORT + 1))/status, log:"
  echo "  var/demo/depth.log). Ctrl-C stops everything."
  wait "$worker"
elif [ "$SOURCE" = live ]; then
  faust -A app gateway "$SAMPLE" --dataset GLBX.MDP3 --port "$GATEWAY_PORT" --speed "$SPEED" \
    >var/demo/gateway.log 2>&1 &
  feed+=($!)
  DATABENTO_API_KEY=${DATABENTO_API_KEY:-demo-key-for-the-stand-in-gateway} \
    faust -A app live --gateway "127.0.0.1:$GATEWAY_PORT" --dataset GLBX.MDP3 \
    --symbols ALL_SYMBOLS --start 0 --web-port $((TAPESTREAM_WEB_PORT + 1)) \
    >var/demo/live.log 2>&1 &
  feed+=($!)
  echo "  The stand-in gateway serves $SAMPLE at ${SPEED}x its recorded pace; the live source"
  echo "  reads it (status: http://127.0.0.1:$((TAPESTREAM_WEB_PORT + 1))/status, log:"
  echo "  var/demo/live.log). Ctrl-C stops everything."
  wait "$worker"
else
  echo "  Replaying $SAMPLE at ${SPEED}x its recorded pace. Ctrl-C stops everything."
  echo
  faust -A app replay "$SAMPLE" --speed "$SPEED"
  echo
  echo "replay finished; the worker keeps serving at $url/books/ until Ctrl-C"
  wait "$worker"
fi
