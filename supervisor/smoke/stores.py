"""The run's writes outside the targets: configs in the config database, dedup keys in Redis.

Both stores sit behind small Protocols, so the steps can be tested with in-memory fakes. The
real ones import SQLAlchemy and redis-py only when built, which keeps `supervisor --help` fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from supervisor.smoke.errors import ConfigStoreError, SmokeError, SmokeOptionError


class ConfigStore(Protocol):
    """The writes the smoke test makes to the config database."""

    def add(self, *, channel: str, user_id: str) -> str: ...

    def disable(self, config_id: str) -> None: ...

    def delete(self, config_ids: Sequence[str]) -> int: ...

    def close(self) -> None: ...


class DedupKeyStore(Protocol):
    """Deletes dedup keys by event id."""

    def delete_events(self, event_ids: Sequence[str]) -> int: ...

    def close(self) -> None: ...


class RedisDedupKeys:
    """This run's dedup keys in Redis: `<prefix><event_id>`, as the instances write them."""

    def __init__(self, redis_url: str, key_prefix: str, timeout_s: float) -> None:
        import redis

        self._client = redis.Redis.from_url(
            redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self._prefix = key_prefix

    def delete_events(self, event_ids: Sequence[str]) -> int:
        import redis

        keys = [self._prefix + event_id for event_id in event_ids]
        if not keys:
            return 0
        try:
            deleted: int = self._client.delete(*keys)
        except redis.RedisError as error:
            raise SmokeError(f"failed to delete dedup keys in Redis: {error}") from error
        return deleted

    def close(self) -> None:
        self._client.close()


class DbConfigStore:
    """Config writes through `supervisor.db`, on the database the instances read.

    Database errors become `ConfigStoreError`, so a failed write fails the step, not the run.
    """

    def __init__(self, database_url: str) -> None:
        import sqlalchemy as sa

        from supervisor import db
        from supervisor.settings import mask_url

        self._db = db
        self._errors = (sa.exc.SQLAlchemyError, db.DatabaseError)
        shown_url = mask_url(database_url)
        try:
            self._engine = db.create_engine_from_url(database_url)
            has_table = db.table_exists(self._engine)
        except db.DatabaseUrlError as error:
            raise SmokeOptionError(f"--database-url is invalid: {error}") from error
        except sa.exc.SQLAlchemyError as error:
            raise SmokeOptionError(
                f"cannot connect to the config database {shown_url}: {error}"
            ) from error
        if not has_table:
            self._engine.dispose()
            raise SmokeOptionError(
                f'the database {shown_url} has no "{db.TABLE_NAME}" table; point '
                "--database-url at the database the instances read"
            )

    def add(self, *, channel: str, user_id: str) -> str:
        with self._translate_errors("insert a config"):
            config_id: str = self._db.add_config(self._engine, channel=channel, user_id=user_id)
        return config_id

    def disable(self, config_id: str) -> None:
        with self._translate_errors(f"disable config {config_id}"):
            self._db.disable_config(self._engine, config_id)

    def delete(self, config_ids: Sequence[str]) -> int:
        deleted = 0
        for config_id in config_ids:
            with self._translate_errors(f"delete config {config_id}"):
                try:
                    self._db.delete_config(self._engine, config_id)
                except self._db.ConfigNotFoundError:
                    continue
            deleted += 1
        return deleted

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except self._errors as error:
            raise ConfigStoreError(f"failed to {action} in the config database: {error}") from error
