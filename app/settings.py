"""Every setting of tapestream, read once from the environment.

docs/configuration.md's table documents each of these; keep the two in step.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from pipeline.stages import StageConfig
    from tables.ifd import IfdConfig
    from tables.patterns import PatternConfig

Guarantee = Literal["at_least_once", "exactly_once"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseModel, frozen=True):
    broker: str = Field("kafka://127.0.0.1:9092", description="KAFKA_BROKER")
    # How every client reaches the broker (app/kafka.py): TLS and SASL, from the environment.
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="TAPESTREAM_KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        "SCRAM-SHA-512", description="TAPESTREAM_KAFKA_SASL_MECHANISM"
    )
    kafka_username: str = Field("", description="TAPESTREAM_KAFKA_USERNAME")
    # A SecretStr prints as stars, so no repr or log of the settings shows it.
    kafka_password: SecretStr = Field(SecretStr(""), description="TAPESTREAM_KAFKA_PASSWORD")
    kafka_ca_file: Path | None = Field(None, description="TAPESTREAM_KAFKA_CA_FILE")
    kafka_cert_file: Path | None = Field(None, description="TAPESTREAM_KAFKA_CERT_FILE")
    kafka_key_file: Path | None = Field(None, description="TAPESTREAM_KAFKA_KEY_FILE")
    app_id: str = Field("tapestream", description="TAPESTREAM_APP_ID")
    topic_prefix: str = Field("", description="TAPESTREAM_TOPIC_PREFIX")
    partitions: int = Field(4, ge=1, le=1024, description="TAPESTREAM_PARTITIONS")
    store: str = Field("rocksdb://", description="TAPESTREAM_STORE")
    data_dir: Path = Field(Path("var/state"), description="TAPESTREAM_DATA_DIR")
    rocksdb_write_buffer_mb: int = Field(
        4, ge=1, le=1024, description="TAPESTREAM_ROCKSDB_WRITE_BUFFER_MB"
    )
    heap_trim_s: float = Field(60.0, ge=0, description="TAPESTREAM_HEAP_TRIM_S")
    rocksdb_cache_mb: int = Field(64, ge=8, le=65_536, description="TAPESTREAM_ROCKSDB_CACHE_MB")
    rocksdb_memtables_mb: int = Field(
        32, ge=4, le=65_536, description="TAPESTREAM_ROCKSDB_MEMTABLES_MB"
    )
    web_host: str = Field("127.0.0.1", description="TAPESTREAM_WEB_HOST")
    web_port: int = Field(6066, ge=1, le=65535, description="TAPESTREAM_WEB_PORT")
    processing_guarantee: Guarantee = Field(
        "at_least_once", description="TAPESTREAM_PROCESSING_GUARANTEE"
    )
    batch_records: int = Field(4096, ge=1, le=1_000_000, description="TAPESTREAM_BATCH_RECORDS")
    max_message_bytes: int = Field(
        1_000_000, ge=4096, le=100_000_000, description="TAPESTREAM_MAX_MESSAGE_BYTES"
    )
    fetch_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024 * 1024,
        le=1024 * 1024 * 1024,
        description="TAPESTREAM_FETCH_BYTES",
    )
    fetch_wait: float = Field(0.02, gt=0, le=5, description="TAPESTREAM_FETCH_WAIT")
    commit_interval: float = Field(1.0, gt=0, description="TAPESTREAM_COMMIT_INTERVAL")
    bar_intervals: str = Field("1m,5m,15m", description="TAPESTREAM_BAR_INTERVALS")
    allowed_lateness: float = Field(2.0, ge=0, le=3600, description="TAPESTREAM_ALLOWED_LATENESS")
    session_timeout: float = Field(10.0, ge=6, le=300, description="TAPESTREAM_SESSION_TIMEOUT")
    broker_wait: float = Field(300.0, ge=0, le=86_400, description="TAPESTREAM_BROKER_WAIT")
    pressure_interval: str = Field("5m", description="TAPESTREAM_PRESSURE_INTERVAL")
    large_trade_size: int = Field(50, ge=1, description="TAPESTREAM_LARGE_TRADE_SIZE")
    session_start: str = Field("00:00", description="TAPESTREAM_SESSION_START")
    session_starts: str = Field("", description="TAPESTREAM_SESSION_STARTS")
    baseline_sessions: int = Field(20, ge=1, le=400, description="TAPESTREAM_BASELINE_SESSIONS")
    signal_z_volume: float = Field(2.0, gt=0, description="TAPESTREAM_SIGNAL_Z_VOLUME")
    signal_z_net: float = Field(3.5, gt=0, description="TAPESTREAM_SIGNAL_Z_NET")
    signal_z_flow: float = Field(0.0, ge=0, description="TAPESTREAM_SIGNAL_Z_FLOW")
    signal_volume_floor: int = Field(100, ge=0, description="TAPESTREAM_SIGNAL_VOLUME_FLOOR")
    signal_min_sessions: int = Field(5, ge=1, description="TAPESTREAM_SIGNAL_MIN_SESSIONS")
    signal_cooldown: float = Field(900.0, ge=0, description="TAPESTREAM_SIGNAL_COOLDOWN")
    lag_limit: float = Field(5.0, ge=0, description="TAPESTREAM_LAG_LIMIT")
    pattern_lookback: int = Field(20, ge=1, le=1000, description="TAPESTREAM_PATTERN_LOOKBACK")
    pattern_volume_factor: float = Field(3.0, gt=0, description="TAPESTREAM_PATTERN_VOLUME_FACTOR")
    pattern_price_pct: float = Field(5.0, gt=0, description="TAPESTREAM_PATTERN_PRICE_PCT")
    pattern_breakout_pct: float = Field(0.1, ge=0, description="TAPESTREAM_PATTERN_BREAKOUT_PCT")
    pattern_rsi_high: float = Field(70.0, gt=0, lt=100, description="TAPESTREAM_PATTERN_RSI_HIGH")
    pattern_rsi_low: float = Field(30.0, gt=0, lt=100, description="TAPESTREAM_PATTERN_RSI_LOW")
    delta_depth: int = Field(10, ge=1, le=50, description="TAPESTREAM_DELTA_DEPTH")
    ws_queue: int = Field(1000, ge=10, le=1_000_000, description="TAPESTREAM_WS_QUEUE")
    ws_warm: int = Field(1000, ge=0, le=1_000_000, description="TAPESTREAM_WS_WARM")
    ingest_max_bytes: int = Field(
        1 << 20, ge=1024, le=16 << 20, description="TAPESTREAM_INGEST_MAX_BYTES"
    )
    option_groups: str = Field(
        "underlying+right,underlying+expiration+right", description="TAPESTREAM_OPTION_GROUPS"
    )
    replication: int = Field(1, ge=1, le=16, description="TAPESTREAM_REPLICATION")
    min_insync: int = Field(1, ge=1, le=16, description="TAPESTREAM_MIN_INSYNC")
    retention: str = Field("7d", description="TAPESTREAM_RETENTION")
    retention_bytes: int = Field(-1, ge=-1, description="TAPESTREAM_RETENTION_BYTES")
    lake_root: str = Field("var/lake", description="TAPESTREAM_LAKE_ROOT")
    lake_topics: str = Field(
        "mbo.raw,trades,bars,indicators,pressure,signals,deltas",
        description="TAPESTREAM_LAKE_TOPICS",
    )
    lake_roll: float = Field(300.0, gt=0, le=86_400, description="TAPESTREAM_LAKE_ROLL")
    lake_file_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, le=4 * 1024**3, description="TAPESTREAM_LAKE_FILE_BYTES"
    )

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        return v if "://" in v else f"kafka://{v}"

    @field_validator("retention")
    @classmethod
    def _retention(cls, v: str) -> str:
        if v.strip() not in ("-1", "forever"):
            from models.intervals import parse_interval

            parse_interval(v)
        return v.strip()

    @field_validator("min_insync")
    @classmethod
    def _min_insync(cls, v: int, info: ValidationInfo) -> int:
        replication = info.data.get("replication", 1)
        if v > replication:
            raise ValueError(f"must not exceed TAPESTREAM_REPLICATION ({replication})")
        return v

    @property
    def retention_ms(self) -> int:
        """retention.ms of the raw and output topics; -1 keeps everything."""
        if self.retention in ("-1", "forever"):
            return -1
        from models.intervals import parse_interval

        return parse_interval(self.retention) // 1_000_000

    def topic_configs(self) -> dict[str, str]:
        """What every raw and output topic is created with (docs/topics.md, "Retention")."""
        return {
            "retention.ms": str(self.retention_ms),
            "retention.bytes": str(self.retention_bytes),
            "min.insync.replicas": str(self.min_insync),
        }

    @field_validator("bar_intervals")
    @classmethod
    def _intervals(cls, v: str) -> str:
        from models.intervals import parse_interval

        names = [x.strip() for x in v.split(",") if x.strip()]
        if not names:
            raise ValueError("needs at least one interval, as in 1m,5m,15m")
        for name in names:
            parse_interval(name)
        return ",".join(names)

    @property
    def bar_intervals_ns(self) -> list[int]:
        from models.intervals import parse_interval

        return [parse_interval(x) for x in self.bar_intervals.split(",")]

    @property
    def lateness_ns(self) -> int:
        return round(self.allowed_lateness * 1e9)

    @field_validator("pressure_interval")
    @classmethod
    def _pressure_interval(cls, v: str) -> str:
        from models.intervals import parse_interval

        if 86_400_000_000_000 % parse_interval(v):
            raise ValueError("must divide a day, as 1m, 5m or 15m do")
        return v.strip()

    @field_validator("session_start")
    @classmethod
    def _session_start(cls, v: str) -> str:
        import re

        m = re.fullmatch(r"([01][0-9]|2[0-3]):([0-5][0-9])", v.strip())
        if not m:
            raise ValueError("must be a UTC time of day as HH:MM, as in 22:00")
        return v.strip()

    @field_validator("session_starts")
    @classmethod
    def _session_starts(cls, v: str) -> str:
        from tables.venues import known_venue

        for item in (x.strip() for x in v.split(",") if x.strip()):
            venue, _, start = item.partition("=")
            if not known_venue(venue.strip()):
                raise ValueError(
                    f"{venue.strip()!r} is not a venue Databento lists; give VENUE=HH:MM pairs "
                    "with venue MICs, as in GLBX=22:00,XNAS=00:00"
                )
            cls._session_start(start)
        return v.strip()

    @field_validator("option_groups")
    @classmethod
    def _option_groups(cls, v: str) -> str:
        from tables.options import parse_groups

        parse_groups(v)
        return v.strip()

    def venue_starts(self) -> tuple[tuple[str, int], ...]:
        pairs = (x.split("=") for x in self.session_starts.split(",") if x.strip())
        return tuple((venue.strip(), _time_of_day_ns(start)) for venue, start in pairs)

    def ifd_config(self) -> IfdConfig:
        from models.intervals import parse_interval
        from tables.ifd import IfdConfig
        from tables.options import parse_groups
        from tables.signals import SignalConfig

        return IfdConfig(
            interval_ns=parse_interval(self.pressure_interval),
            lateness_ns=self.lateness_ns,
            large_size=self.large_trade_size,
            session_start_ns=_time_of_day_ns(self.session_start),
            venue_starts=self.venue_starts(),
            sessions=self.baseline_sessions,
            option_groups=parse_groups(self.option_groups),
            signal=SignalConfig(
                z_volume=self.signal_z_volume,
                z_net=self.signal_z_net,
                z_flow=self.signal_z_flow,
                volume_floor=self.signal_volume_floor,
                min_sessions=self.signal_min_sessions,
                cooldown_ns=round(self.signal_cooldown * 1e9),
            ),
        )

    def pattern_config(self) -> PatternConfig:
        from tables.patterns import PatternConfig

        return PatternConfig(
            lookback=self.pattern_lookback,
            volume_factor=self.pattern_volume_factor,
            price_pct=self.pattern_price_pct,
            breakout_pct=self.pattern_breakout_pct,
            rsi_high=self.pattern_rsi_high,
            rsi_low=self.pattern_rsi_low,
        )

    def stage_config(self) -> StageConfig:
        """What the stages of the graph (pipeline/) are built with."""
        from pipeline.stages import StageConfig

        return StageConfig(
            bar_intervals_ns=self.bar_intervals_ns,
            lateness_ns=self.lateness_ns,
            patterns=self.pattern_config(),
            ifd=self.ifd_config(),
            delta_depth=self.delta_depth,
            partitions=self.partitions,
        )

    @model_validator(mode="after")
    def _rocksdb_budget(self) -> Settings:
        if self.rocksdb_memtables_mb >= self.rocksdb_cache_mb:
            raise ValueError(
                "TAPESTREAM_ROCKSDB_MEMTABLES_MB must be below TAPESTREAM_ROCKSDB_CACHE_MB"
                " (memtables are charged to the cache)"
            )
        return self

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_username and self.kafka_password.get_secret_value()):
            raise ValueError(
                "TAPESTREAM_KAFKA_SECURITY_PROTOCOL is SASL_*: set TAPESTREAM_KAFKA_USERNAME and"
                " TAPESTREAM_KAFKA_PASSWORD"
            )
        if (self.kafka_cert_file is None) != (self.kafka_key_file is None):
            raise ValueError("TAPESTREAM_KAFKA_CERT_FILE and TAPESTREAM_KAFKA_KEY_FILE go together")
        for name in ("kafka_ca_file", "kafka_cert_file", "kafka_key_file"):
            f = getattr(self, name)
            if f is not None and not f.is_file():
                raise ValueError(f"{type(self).model_fields[name].description}: {f} is not a file")
        return self

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        if not (v.startswith("rocksdb://") or v.startswith("memory://")):
            raise ValueError("must be rocksdb:// or memory://")
        return v

    @property
    def bootstrap_servers(self) -> str:
        """host:port list for plain Kafka clients (replay, tests, consumers)."""
        return ",".join(u.split("://", 1)[-1] for u in self.broker.split(";"))

    @property
    def worker_fetch_bytes(self) -> int:
        """Bytes a worker fetches per partition per request: at least two of the largest
        raw messages, so one fetch never stops short of a whole message."""
        return max(self.fetch_bytes, 2 * self.max_message_bytes)

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


class SettingsError(Exception):
    pass


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values = {}
    for name, f in Settings.model_fields.items():
        var = f.description
        if var and var in env and env[var] != "":
            values[name] = env[var]
    try:
        return Settings(**values)
    except ValidationError as exc:
        # Each problem by its variable and rule; never the value, which may be a secret.
        problems = "; ".join(
            f"{Settings.model_fields[str(e['loc'][0])].description}: {e['msg']}"
            if e["loc"]
            else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from None


def _time_of_day_ns(text: str) -> int:
    hh, mm = (int(x) for x in text.strip().split(":"))
    return (hh * 60 + mm) * 60_000_000_000
