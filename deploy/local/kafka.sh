#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) for development and CI.
#
#   deploy/local/kafka.sh start    resolve jars (cached), format storage, start, wait until it answers
#   deploy/local/kafka.sh stop     stop the broker this script started
#   deploy/local/kafka.sh status   exit 0 if the broker answers
#   deploy/local/kafka.sh secure   print the SASL and TLS listeners and where their credentials are
#
# Besides PLAINTEXT on KAFKA_PORT, the broker listens with SASL (PLAIN, SCRAM-SHA-256 and -512)
# on KAFKA_PORT+2 and with TLS on KAFKA_PORT+3, so clients' security settings can be tested
# against it. Their user, password and CA are made here on first start, kept in the broker's
# run directory (mode 600), and never printed.
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
sasl_port=$((port + 2))
ssl_port=$((port + 3))
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

# The SASL user's password and the TLS listener's CA and certificate (for 127.0.0.1), made once.
make_credentials() {
  local tls=$run/tls
  if [ ! -f "$run/credentials" ]; then
    mkdir -p "$run"
    (umask 077 && printf 'TAPESTREAM_KAFKA_USERNAME=tapestream\nTAPESTREAM_KAFKA_PASSWORD=%s\n' \
      "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$run/credentials")
  fi
  if [ ! -f "$tls/broker.pem" ]; then
    mkdir -p "$tls"
    (
      cd "$tls"
      umask 077
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=tapestream local CA" \
        -keyout ca.key -out ca.pem 2>/dev/null
      openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout broker.key \
        -out broker.csr 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
      openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile san.ext -out broker.crt 2>/dev/null
      # Kafka's PEM key store: the key in PKCS#8, then the certificate chain, in one file
      openssl pkcs8 -topk8 -nocrypt -in broker.key -out broker.p8
      cat broker.p8 broker.crt ca.pem >broker.pem
      chmod 644 ca.pem
    )
  fi
}

write_config() {
  mkdir -p "$run/data"
  make_credentials
  local user password
  user=$(sed -n 's/^TAPESTREAM_KAFKA_USERNAME=//p' "$run/credentials")
  password=$(sed -n 's/^TAPESTREAM_KAFKA_PASSWORD=//p' "$run/credentials")
  (umask 077 && cat >"$run/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl_port,SASL_PLAINTEXT://127.0.0.1:$sasl_port,SSL://127.0.0.1:$ssl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sasl_port,SSL://127.0.0.1:$ssl_port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL
inter.broker.listener.name=PLAINTEXT
# Clients' security settings are tested against these (SCRAM users are added after start).
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$user="$password";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$run/tls/broker.pem
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
  )
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
      add_scram_user
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

# SCRAM credentials live in the cluster's metadata: added once per data directory.
add_scram_user() {
  [ -f "$run/data/.scram-user" ] && return 0
  local user password
  user=$(sed -n 's/^TAPESTREAM_KAFKA_USERNAME=//p' "$run/credentials")
  password=$(sed -n 's/^TAPESTREAM_KAFKA_PASSWORD=//p' "$run/credentials")
  local mechanism
  for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do  # one per request, as the broker wants
    java_cmd kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$port" --alter \
      --add-config "$mechanism=[password=$password]" --entity-type users --entity-name "$user"
    # Its output would show the password on an error: the outcome alone is reported. The
    # broker may still be settling just after it first answers: a few tries.
    local try
    for try in 1 2 3 4 5; do
      "${java_args[@]}" >/dev/null 2>&1 && break
      if [ "$try" = 5 ]; then
        say "could not add the $mechanism user; the SASL listener will refuse it"
        return 0
      fi
      sleep 2
    done
  done
  touch "$run/data/.scram-user"
}

# Where a client finds the secured listeners (the password stays in the credentials file).
secure() {
  printf 'SASL_BOOTSTRAP=127.0.0.1:%s\nSSL_BOOTSTRAP=127.0.0.1:%s\n' "$sasl_port" "$ssl_port"
  printf 'CREDENTIALS_FILE=%s\nCA_FILE=%s\n' "$run/credentials" "$run/tls/ca.pem"
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
  secure) secure ;;
  *) echo "usage: $0 start|stop|status|secure" >&2; exit 2 ;;
esac
