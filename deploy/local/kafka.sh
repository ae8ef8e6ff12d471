#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) for development and CI.
#
#   deploy/local/kafka.sh start    resolve jars (cached), format storage, start, wait until it answers
#   deploy/local/kafka.sh stop     stop the broker this script started
#   deploy/local/kafka.sh status   exit 0 if the broker answers
#
# If KAFKA_BROKER is set to a broker that answers (Redpanda in production), nothing is started.
#
# Settings (environment):
#   KAFKA_PORT        listener port on 127.0.0.1                    (default 9092)
#   KAFKA_HOME_DIR    where jars, config, data and logs live         (default ~/.cache/tapestream/kafka)
#   KAFKA_VERSION     Apache Kafka release resolved from Maven       (default 3.9.1)
#   KAFKA_HEAP_OPTS   JVM heap                                        (default -Xms256m -Xmx1g)
#   KAFKA_FRESH=1     wipe the broker's data before starting
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
port=${KAFKA_PORT:-9092}
ctrl_port=$((port + 1))
version=${KAFKA_VERSION:-3.9.1}
home=${KAFKA_HOME_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tapestream/kafka}
jars=$home/jars-$version
run=$home/run-$port
pidfile=$run/kafka.pid
log=$run/server.log

say() { printf '[kafka.sh] %s\n' "$*" >&2; }

# Answers when something accepts TCP on host:port; the broker only listens once it is ready.
answers() {
  local hostport=$1 host port
  host=${hostport%:*}
  port=${hostport##*:}
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

external_broker() {
  local b=${KAFKA_BROKER:-}
  b=${b#kafka://}
  b=${b%%,*}
  [ -n "$b" ] && [ "$b" != "127.0.0.1:$port" ] && [ "$b" != "localhost:$port" ] && printf '%s' "$b"
}

resolve_jars() {
  if [ -f "$jars/.complete" ]; then
    return
  fi
  say "resolving Apache Kafka $version from Maven Central (cached in $jars)"
  mkdir -p "$jars"
  mvn -q -B -f "$here/pom.xml" -Dkafka.version="$version" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$jars"
  touch "$jars/.complete"
}

write_config() {
  mkdir -p "$run/data"
  cat >"$run/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$run/data
num.partitions=1
# Topics are created by tapestream with the configured partition count, never implicitly
# by a producer (that would give the broker default and break co-partitioning).
auto.create.topics.enable=false
# One node: every internal topic, the transaction log included, has one replica,
# so transactions (processing_guarantee=exactly_once) work.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
default.replication.factor=1
min.insync.replicas=1
# Tests create and join groups often; don't make them wait for stragglers.
group.initial.rebalance.delay.ms=0
message.max.bytes=10485760
log.retention.hours=168
log.segment.bytes=268435456
EOF
  cat >"$run/log4j.properties" <<EOF
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
EOF
}

java_cmd() {
  local heap
  read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
  java_args=(java "${heap[@]}" -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j.configuration="file:$run/log4j.properties" -cp "$jars/*" "$@")
}

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null && printf '%s' "$pid"
}

start() {
  local ext
  if ext=$(external_broker); then
    if answers "$ext"; then
      say "KAFKA_BROKER=$ext answers; not starting a local broker"
      return 0
    fi
    say "KAFKA_BROKER=$ext does not answer"
    return 1
  fi
  if running_pid >/dev/null; then
    say "already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"
    return 0
  fi
  if answers "127.0.0.1:$port"; then
    say "something else already listens on 127.0.0.1:$port; using it"
    return 0
  fi
  local t0=$SECONDS
  resolve_jars
  [ "${KAFKA_FRESH:-0}" = 1 ] && rm -rf "$run"
  write_config
  if [ ! -f "$run/data/meta.properties" ]; then
    java_cmd kafka.tools.StorageTool random-uuid
    local cluster_id
    cluster_id=$("${java_args[@]}")
    java_cmd kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$run/server.properties"
    "${java_args[@]}" >/dev/null
  fi
  say "starting on 127.0.0.1:$port (logs: $log)"
  java_cmd kafka.Kafka "$run/server.properties"
  # In a session of its own: Ctrl-C in the terminal that started it (make run) must not reach
  # the broker while the worker and replay still flush to it; `stop` ends it.
  setsid "${java_args[@]}" </dev/null >"$run/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  disown
  for _ in $(seq 1 240); do
    if answers "127.0.0.1:$port"; then
      say "ready in $((SECONDS - t0))s"
      return 0
    fi
    if ! running_pid >/dev/null; then
      say "broker exited during start; last lines of $run/stdout.log and $log:"
      tail -n 30 "$run/stdout.log" "$log" >&2 || true
      return 1
    fi
    sleep 0.5
  done
  say "broker did not answer within 120s"
  stop
  return 1
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$pidfile"
    return 0
  fi
  say "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  local ext
  if ext=$(external_broker); then answers "$ext"; else answers "127.0.0.1:$port"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
