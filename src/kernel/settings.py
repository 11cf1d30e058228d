"""One Settings object, read from the environment and `.env`, validated once at start-up."""

import os
import re
import resource
import secrets
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kernel.client_ip import IPNetwork, parse_trusted_proxies

# OWASP's floor for argon2id (m=19 MiB, t=2, p=1); production refuses anything weaker.
OWASP_MIN_MEMORY_KIB = 19 * 1024
OWASP_MIN_TIME_COST = 2
MIN_SECRET_LENGTH = 32
# Descriptors a process needs besides its client connections: the database pool, log and
# SQLite files, SMTP, the event loop's own. The connection cap leaves at least this free.
FD_RESERVE = 64
MAX_DEFAULT_CONNECTIONS = 4096
MAX_LISTEN_BACKLOG = 2048
RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600}
_RATE = re.compile(r"\s*(\d{1,9})\s*/\s*(second|minute|hour)\s*")
MAX_RATE = 1_000_000


class RequestRate(NamedTuple):
    """`limit` requests per `window_seconds` (RATE_LIMIT_PER_IP)."""

    limit: int
    window_seconds: int


# zxcvbn's estimate of the guesses a key needs, as a power of ten. Repeated, sequential,
# keyboard and dictionary text scores far below (32 "a"s: 10^2.6; "password" four times:
# 10^1.1; a phrase such as "userapi-production-2026-secret-key": 10^24), while random keys
# score far above (secrets.token_urlsafe(32): never below 10^41 in 20,000 tries; even 32
# hex digits, 128 random bits that zxcvbn undercounts, never below 10^26).
MIN_SECRET_GUESSES_LOG10 = 25
# zxcvbn's own cap on input length: characters past it add nothing to the estimate.
SECRET_ESTIMATE_MAX_LENGTH = 72
SECRET_ADVICE = (
    f"at least {MIN_SECRET_LENGTH} random characters, such as the output of "
    "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
)


class SettingsError(SystemExit):
    """A bad setting: stops start-up with one line per bad value, never a traceback."""


def open_files_limit() -> int:
    """This process's soft RLIMIT_NOFILE (`ulimit -n`): the descriptors it may hold."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (taskset, a container's cpuset),
    not the machine's count, which os.cpu_count() gives."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _total_memory_kib() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
    except (ValueError, OSError, AttributeError):
        return None


def _hard_to_guess(key: str) -> bool:
    """Long enough, and not made of repeats, sequences or words (zxcvbn's estimate)."""
    if len(key) < MIN_SECRET_LENGTH:
        return False
    from zxcvbn import zxcvbn  # its word lists load on first use: production only

    estimate = zxcvbn(key[:SECRET_ESTIMATE_MAX_LENGTH], max_length=SECRET_ESTIMATE_MAX_LENGTH)
    return float(estimate["guesses_log10"]) >= MIN_SECRET_GUESSES_LOG10


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    env: Literal["development", "test", "production"] = "development"
    database_url: str = ""
    data_dir: Path = Path("data")
    secret_key: str = Field(default="", repr=False)
    # A key being rotated out: still verifies tokens, never signs new ones.
    secret_key_previous: str = Field(default="", repr=False)
    jwt_issuer: str = "userapi"
    jwt_audience: str = "userapi"
    # EdDSA (Ed25519) or ES256: other services verify with the published JWKS. HS256:
    # one shared secret (SECRET_KEY), for a single service only.
    jwt_algorithm: Literal["EdDSA", "ES256", "HS256"] = "EdDSA"
    # A new key is in the JWKS this long before it signs, so verifiers' caches have it.
    key_publish_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    access_token_ttl_seconds: int = Field(default=15 * 60, ge=30, le=24 * 3600)
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60, le=365 * 24 * 3600)
    max_sessions_per_user: int = Field(default=50, ge=1, le=10_000)
    # A refresh token spent this recently may be presented again (0: never).
    refresh_reuse_grace_seconds: int = Field(default=10, ge=0, le=300)
    login_max_failures: int = Field(default=5, ge=1, le=1000)
    login_lockout_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    password_min_length: int = Field(default=8, ge=8, le=256)
    # Security events older than this are dropped by `userapi purge-expired`.
    audit_retention_days: int = Field(default=365, ge=1, le=100 * 365)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Per client IP, over register, login, refresh and the email routes, all processes.
    rate_limit_per_ip: Annotated[RequestRate, NoDecode] = RequestRate(60, 60)
    # Where those counts live: empty, the database; else this Redis (kernel.rate_limits).
    redis_url: str = Field(default="", repr=False)
    # Proxies whose X-Forwarded-For is believed (kernel.client_ip); empty: none.
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode] = ()
    auto_migrate: bool = True
    docs_enabled: bool = True
    argon2_time_cost: int = Field(default=3, ge=1, le=20)
    argon2_memory_kib: int = Field(default=64 * 1024, ge=8, le=4 * 1024 * 1024)
    argon2_parallelism: int = Field(default=4, ge=1, le=16)
    # Unset: derived from CPUs, memory and the argon2 cost (see hashing_slots).
    hash_concurrency: int | None = Field(default=None, ge=1, le=256)
    # uvicorn's own variable for its worker count; `userapi serve --workers` sets it,
    # so the hashing memory budget is shared among the workers of one machine.
    web_concurrency: int = Field(default=1, ge=1, le=256)
    # Where `userapi serve` listens unless --host / --port say otherwise (containers and
    # platforms hand the port over in PORT).
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)
    hash_wait_seconds: float = Field(default=10.0, gt=0, le=300)
    # idle: argon2 threads in Linux's SCHED_IDLE class, so reads on their core never wait
    # for a hash; but then anything else busy on the machine delays logins (kernel.hashing).
    hash_thread_priority: Literal["normal", "idle"] = "normal"
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # PgBouncer in transaction mode hands each transaction any server connection, so
    # statements must not stay prepared on a connection between transactions.
    database_pooler: Literal["none", "pgbouncer"] = "none"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Unset: json in production (one object per line, for a log collector), else text.
    log_format: Literal["json", "text"] | None = None
    # /metrics (Prometheus) exists only when enabled; with a token, only for its bearer.
    metrics_enabled: bool = False
    metrics_token: str = Field(default="", repr=False)

    # --- the edge (kernel.edge): what one connection may hold before the app sees a request ---
    # A request head must be complete this long after the connection opens or its previous
    # response ends; its body this long after the head.
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    body_timeout_seconds: float = Field(default=15.0, gt=0, le=600)
    # uvicorn's timeout_keep_alive: an idle kept-alive connection that sends no byte.
    keep_alive_timeout_seconds: int = Field(default=5, ge=1, le=300)
    # Open client connections per process. Unset: half of `ulimit -n`, at most 4096.
    max_connections: int | None = Field(default=None, ge=1, le=10_000_000)

    # --- mail (kernel.mail) ---
    # Unset: smtp when SMTP_HOST is set, else the development backend (log + .eml files).
    mail_backend: Literal["smtp", "log"] | None = None
    mail_from: str = "userapi <no-reply@localhost>"
    smtp_host: str = ""
    # Unset: 465 for SMTP_TLS=tls, 587 for starttls, 25 for none.
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: str = Field(default="", repr=False)
    smtp_tls: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    # Every `userapi serve` process delivers the outbox; false leaves it to `userapi send-mail`.
    mail_sender_enabled: bool = True
    mail_poll_seconds: float = Field(default=2.0, gt=0, le=300)
    mail_retry_seconds: float = Field(default=30.0, gt=0, le=24 * 3600)
    mail_max_attempts: int = Field(default=10, ge=1, le=100)
    # A 5xx answer is permanent: tried this many times, then the mail is failed.
    mail_permanent_failure_attempts: int = Field(default=3, ge=1, le=100)
    # Per address and per client IP, over MAIL_SEND_WINDOW_SECONDS, for the two routes
    # that send a mail on request (password reset, verification email).
    mail_send_limit: int = Field(default=3, ge=1, le=1000)
    mail_send_limit_per_ip: int = Field(default=20, ge=1, le=100_000)
    mail_send_window_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    password_reset_ttl_seconds: int = Field(default=1800, ge=1, le=7 * 24 * 3600)
    email_verification_ttl_seconds: int = Field(default=86400, ge=1, le=30 * 24 * 3600)
    # Where users reach this service: mailed links open its pages (/account/...) unless
    # the templates below are set. Unset: http://127.0.0.1:8000 outside production; in
    # production, mails then carry only the code and the token.
    public_url: str = ""
    # Links in mails to your own page or app ({token} is replaced).
    password_reset_url: str = ""
    email_verification_url: str = ""
    require_verified_email: bool = False

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("rate_limit_per_ip", mode="before")
    @classmethod
    def _parse_rate(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        match = _RATE.fullmatch(value)
        if not match or not 1 <= int(match[1]) <= MAX_RATE:
            raise ValueError(
                f"must look like N/second, N/minute or N/hour (N from 1 to {MAX_RATE}): {value!r}"
            )
        return RequestRate(int(match[1]), RATE_UNITS[match[2]])

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_proxies(cls, value: object) -> object:
        return parse_trusted_proxies(value) if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if url and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        if not url:
            return url
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise ValueError("must look like sqlite+aiosqlite:///path or postgresql+asyncpg://...")
        drivers = {
            "sqlite": "sqlite+aiosqlite",
            "sqlite+aiosqlite": "sqlite+aiosqlite",
            "postgresql": "postgresql+asyncpg",
            "postgres": "postgresql+asyncpg",
            "postgresql+asyncpg": "postgresql+asyncpg",
        }
        if scheme not in drivers:
            raise ValueError(f"unsupported scheme {scheme!r}: use sqlite or postgresql")
        return f"{drivers[scheme]}://{rest}"

    @field_validator("password_reset_url", "email_verification_url")
    @classmethod
    def _link_template(cls, url: str) -> str:
        if url and "{token}" not in url:
            raise ValueError("must contain {token}, where the mailed token goes")
        if url and "://" not in url:
            raise ValueError("must be an absolute URL (https://..., or an app's own scheme://)")
        return url

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, url: str) -> str:
        if url and not url.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http://)")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _pooler_needs_postgres(self) -> "Settings":
        if self.database_pooler != "none" and not self.database_url.startswith("postgresql"):
            raise ValueError("DATABASE_POOLER: a pooler needs a PostgreSQL DATABASE_URL")
        return self

    @model_validator(mode="after")
    def _mail_is_deliverable(self) -> "Settings":
        if self.mail_backend == "smtp" and not self.smtp_host:
            raise ValueError("SMTP_HOST: required with MAIL_BACKEND=smtp")
        if self.env == "production" and not self.smtp_host and self.mail_backend != "log":
            raise ValueError(
                "SMTP_HOST: required in production (or set MAIL_BACKEND=log on purpose)"
            )
        return self

    @model_validator(mode="after")
    def _production_is_strict(self) -> "Settings":
        if self.env != "production":
            return self
        if not self.secret_key:
            raise ValueError(f"SECRET_KEY: required in production: {SECRET_ADVICE}")
        for name, key in (
            ("SECRET_KEY", self.secret_key),
            ("SECRET_KEY_PREVIOUS", self.secret_key_previous),
        ):
            # A rotated-out key still verifies tokens and opens sealed keys: as guessable,
            # it would be as dangerous as the current one.
            if key and not _hard_to_guess(key):
                raise ValueError(f"{name}: too short or too easy to guess; use {SECRET_ADVICE}")
        if self.argon2_memory_kib < OWASP_MIN_MEMORY_KIB:
            raise ValueError(f"ARGON2_MEMORY_KIB: below OWASP's minimum {OWASP_MIN_MEMORY_KIB}")
        if self.argon2_time_cost < OWASP_MIN_TIME_COST:
            raise ValueError(f"ARGON2_TIME_COST: below OWASP's minimum {OWASP_MIN_TIME_COST}")
        return self

    @model_validator(mode="after")
    def _connections_fit_descriptors(self) -> "Settings":
        room = open_files_limit() - self.listen_backlog - FD_RESERVE
        if self.max_connections is not None and self.max_connections > room:
            raise ValueError(
                f"MAX_CONNECTIONS: {self.max_connections} connections do not fit in this "
                f"process's open-file limit of {open_files_limit()} (ulimit -n): at most {room}"
            )
        return self

    @property
    def listen_backlog(self) -> int:
        """Connections the kernel queues for accept(). The event loop accepts a whole queue
        at once, before the connection cap can act, so the queue must fit in what the cap
        leaves free: a quarter of `ulimit -n`, at most uvicorn's default 2048."""
        return max(16, min(MAX_LISTEN_BACKLOG, open_files_limit() // 4))

    @property
    def connection_cap(self) -> int:
        """Open client connections one process keeps (kernel.edge sheds the rest): the
        cap, the accept queue and FD_RESERVE together stay under `ulimit -n`."""
        if self.max_connections is not None:
            return self.max_connections
        return max(1, min(MAX_DEFAULT_CONNECTIONS, open_files_limit() // 2))

    @cached_property
    def hashing_slots(self) -> int:
        """argon2 hashes one process may run at once.

        Each running hash holds ARGON2_MEMORY_KIB and keeps ARGON2_PARALLELISM cores busy
        (one thread a lane): all workers together one per that many CPUs, and within a
        quarter of the machine's memory. More hashes than that only share the cores: no
        more hashes a second, and a newcomer's hash, given a freed slot, would run beside
        the others at a fraction of its speed (kernel.hashing: issue 12's flood).
        """
        if self.hash_concurrency:
            return self.hash_concurrency
        # The workers of one machine share its CPUs, as they share its memory.
        by_cpu = max(1, usable_cpus() // (self.argon2_parallelism * self.web_concurrency))
        total_kib = _total_memory_kib()
        if total_kib is None:
            return by_cpu
        by_memory = total_kib // 4 // self.argon2_memory_kib // self.web_concurrency
        return max(1, min(by_cpu, by_memory))

    @property
    def resolved_log_format(self) -> Literal["json", "text"]:
        return self.log_format or ("json" if self.env == "production" else "text")

    @property
    def resolved_mail_backend(self) -> Literal["smtp", "log"]:
        return self.mail_backend or ("smtp" if self.smtp_host else "log")

    @property
    def resolved_public_url(self) -> str:
        development = "" if self.env == "production" else "http://127.0.0.1:8000"
        return self.public_url or development

    @property
    def resolved_smtp_port(self) -> int:
        return self.smtp_port or {"tls": 465, "starttls": 587, "none": 25}[self.smtp_tls]

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'userapi.db'}"

    @cached_property
    def signing_key(self) -> str:
        """The configured key, or outside production one generated once and kept on disk."""
        if self.secret_key:
            return self.secret_key
        try:
            return self._development_key()
        except OSError as error:
            raise SettingsError(f"invalid setting DATA_DIR: {error}") from None

    def _development_key(self) -> str:
        key_file = self.data_dir / "secret_key"
        if key_file.exists():
            return key_file.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        # Written aside then linked into place: when several workers start at once exactly
        # one key wins, and nobody ever reads a half-written file.
        scratch = key_file.with_name(f".secret_key.{os.getpid()}")
        scratch.write_text(key)
        scratch.chmod(0o600)
        try:
            os.link(scratch, key_file)
        except FileExistsError:
            key = key_file.read_text().strip()
        finally:
            scratch.unlink()
        return key


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation errors into one line per bad value."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            name = "_".join(str(part) for part in problem["loc"]).upper()
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(
                f"invalid setting {name}: {message}" if name else f"invalid setting {message}"
            )
        raise SettingsError("\n".join(lines)) from None
