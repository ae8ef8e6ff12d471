#!/usr/bin/env bash
# `make run`: a local broker, one worker, the sample replayed at its recorded pace, web views up.
# Ctrl-C stops the worker (and the broker, if this script started it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

export TAPESTREAM_APP_ID=${TAPESTREAM_APP_ID:-tapestream-demo}
export TAPESTREAM_TOPIC_PREFIX=${TAPESTREAM_TOPIC_PREFIX:-demo.}
export TAPESTREAM_DATA_DIR=${TAPESTREAM_DATA_DIR:-var/demo/state}
export TAPESTREAM_WEB_PORT=${TAPESTREAM_WEB_PORT:-6066}
SAMPLE=${SAMPLE:-var/sample/sample.mbo.dbn.zst}
SPEED=${SPEED:-1}
url="http://127.0.0.1:$TAPESTREAM_WEB_PORT"
mkdir -p var/demo

was_up=0
bash deploy/local/kafka.sh status && was_up=1
bash deploy/local/kafka.sh start
bootstrap=${KAFKA_BROKER:-127.0.0.1:${KAFKA_PORT:-9092}}
bootstrap=${bootstrap#kafka://}
export KAFKA_BROKER="kafka://$bootstrap"

worker=
cleanup() {
  set +e  # a worker stopped by its signal exits non-zero; the broker must still be stopped
  if [ -n "$worker" ]; then
    kill "$worker" 2>/dev/null
    wait "$worker" 2>/dev/null
  fi
  [ "$was_up" = 1 ] || bash deploy/local/kafka.sh stop
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ ! -f "$SAMPLE" ]; then
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

cat <<MSG

  tapestream is up. Web views (they change as the replay runs):
    $url/books/                every instrument's best bid and offer
    $url/books/1000/?depth=10  one instrument's top 10 levels a side
    $url/instruments/          record and action counts per instrument
    $url/instruments/1000/     one instrument
    $url/metrics               Prometheus metrics
    $url/health                worker status

  Replaying $SAMPLE at ${SPEED}x its recorded pace. Ctrl-C stops everything.

MSG
faust -A app replay "$SAMPLE" --speed "$SPEED"
echo
echo "replay finished; the worker keeps serving at $url/books/ until Ctrl-C"
wait "$worker"
