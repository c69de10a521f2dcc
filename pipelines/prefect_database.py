"""The database behind `gristmill server`: SQLite in the data dir (the default) or PostgreSQL.

PostgreSQL as Prefect documents it: an async driver URL (`postgresql+asyncpg://...`), the
`pg_trgm` extension (created here when the role may, else one line saying what to run), the
schema migrated by the server as it starts. Extra servers on the same database skip the
migrations (`--no-migrate`, Prefect's PREFECT_API_DATABASE_MIGRATE_ON_START=false) and are
refused while the schema is missing. The password never appears in what gristmill prints.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import ConfigurationError

# Prefect reads the first of these names it finds: a value we set goes under both.
URL_SETTINGS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
MIGRATE_SETTINGS = (
    "PREFECT_SERVER_DATABASE_MIGRATE_ON_START",
    "PREFECT_API_DATABASE_MIGRATE_ON_START",
)
POSTGRES_DRIVER = "postgresql+asyncpg"
SQLITE_DRIVER = "sqlite+aiosqlite"
CONNECT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Database:
    """Where a Prefect server keeps run history: `url` (None: SQLite in `home`)."""

    url: str | None
    home: Path

    @property
    def postgres(self) -> bool:
        return self.url is not None and self.url.startswith(POSTGRES_DRIVER)

    def describe(self) -> str:
        """The database in words, without the password."""
        if self.url is None:
            return f"SQLite at {self.home / 'prefect.db'}"
        url = _parse(self.url)
        if not self.postgres:
            return f"SQLite at {url.database}"
        return f"PostgreSQL {url.username or ''}@{url.host or 'localhost'}:{url.port or 5432}/" + (
            url.database or ""
        )


def masked(url: str) -> str:
    """`url` with its password replaced by ***."""
    try:
        return str(_parse(url).render_as_string(hide_password=True))
    except ConfigurationError:
        return "<not a database URL>"


def _parse(url: str) -> Any:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            "the database URL is not one SQLAlchemy can read",
            hint="write it as postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE",
        ) from exc


def chosen(flag: str | None, env: Mapping[str, str], home: Path) -> Database:
    """The database a server started now uses: `--database-url`, else Prefect's own setting
    from the environment, else SQLite in `home`. Plain `postgresql://` means asyncpg."""
    raw = flag or next((env[name] for name in URL_SETTINGS if env.get(name)), None)
    if not raw:
        return Database(None, home)
    url = _parse(raw)
    driver = str(url.drivername)
    if driver in ("postgresql", "postgres"):
        url = url.set(drivername=POSTGRES_DRIVER)
    elif driver == "sqlite":
        url = url.set(drivername=SQLITE_DRIVER)
    elif driver not in (POSTGRES_DRIVER, SQLITE_DRIVER):
        raise ConfigurationError(
            f"Prefect's server cannot use the database driver {driver!r}",
            hint=f"write the URL as {POSTGRES_DRIVER}://USER:PASSWORD@HOST:PORT/DATABASE",
        )
    if url.drivername == POSTGRES_DRIVER and not url.database:
        raise ConfigurationError(
            f"the database URL {masked(raw)} names no database",
            hint=f"end it with /DATABASE: {POSTGRES_DRIVER}://USER@HOST:PORT/prefect",
        )
    return Database(str(url.render_as_string(hide_password=False)), home)


def server_settings(database: Database, *, migrate: bool) -> dict[str, str]:
    """Prefect settings for a server on `database` (added to its environment)."""
    settings: dict[str, str] = {}
    if database.url is not None:
        settings.update(dict.fromkeys(URL_SETTINGS, database.url))
    if not migrate:
        settings.update(dict.fromkeys(MIGRATE_SETTINGS, "false"))
    return settings


def prepare(database: Database, *, migrate: bool, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Check a PostgreSQL database before Prefect starts on it, and give it `pg_trgm`; raise
    ConfigurationError with what to do when it is unreachable, refuses us or lacks what
    Prefect needs. Nothing to do for SQLite."""
    if database.postgres and database.url is not None:
        asyncio.run(_prepare_postgres(database.url, migrate=migrate, timeout=timeout))


async def _prepare_postgres(raw: str, *, migrate: bool, timeout: float) -> None:
    import asyncpg

    from tasks.redaction import redact

    url = _parse(raw)
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    try:
        connection = await asyncpg.connect(
            host=url.host or "localhost",
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            database=url.database,
            timeout=timeout,
        )
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, ConnectionRefusedError):
            reason = "connection refused"
        else:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no answer"
        raise ConfigurationError(
            f"cannot reach PostgreSQL at {where} ({reason})",
            hint="is it running? check the host and port of --database-url",
        ) from None
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        message = redact(str(exc), url.password)
        raise ConfigurationError(
            f"PostgreSQL at {where} refused {url.username or 'the connection'}: {message}",
            hint="check the user, password and database of --database-url",
        ) from None
    try:
        await _ensure_trigram(connection, url)
        if not migrate and not await connection.fetchval("SELECT to_regclass('alembic_version')"):
            raise ConfigurationError(
                f"database {url.database} at {where} has no Prefect schema yet (--no-migrate)",
                hint="start one server without --no-migrate first, or run "
                "`prefect server database upgrade -y` with the same URL",
            )
    finally:
        await connection.close()


async def _ensure_trigram(connection: Any, url: Any) -> None:
    """Prefect's name searches need `pg_trgm`: create it when missing, if this role may."""
    import asyncpg

    if await connection.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'"):
        return
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except asyncpg.InsufficientPrivilegeError:
        raise ConfigurationError(
            f"database {url.database} lacks the pg_trgm extension Prefect needs, and role "
            f"{url.username} may not create it",
            hint=f'as a superuser run: psql -d {url.database} -c "CREATE EXTENSION pg_trgm;"',
        ) from None
    except asyncpg.PostgresError as exc:  # e.g. the extension is not installed on the server
        raise ConfigurationError(
            f"cannot create the pg_trgm extension Prefect needs in {url.database}: {exc}",
            hint="install PostgreSQL's contrib extensions on the database server",
        ) from None
