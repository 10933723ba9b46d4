"""The sweep results store: one row per trial in a real database (SQLAlchemy).

Default: SQLite, one file in the sweep directory (``sqlite:///DIR/sweep.db``). Any SQLAlchemy URL
works for a store shared by a cluster (``postgresql://user@host/db``, the same URLs Optuna takes).
Several sweeps can share one database: rows carry the id of their sweep.

Crash safety comes from the database: every change is one transaction, so a ``kill -9`` leaves
each row either before or after its update, never half-written. Only the sweep's coordinator
process writes (workers return results to it), so SQLite never sees concurrent writers.

Trial life cycle::

    pending --(submitted)--> running --(returned)--> complete
                                     \\--(raised)---> failed
    running/failed --(sweep re-run: requeue)--> pending        (attempts counts the runs)

``(sweep, key)`` is unique: a configuration is stored exactly once, however often it is re-run.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("pending", "running", "complete", "failed")


class StorageError(ValueError):
    """The storage URL cannot be opened (a user error: the message says how to fix it)."""


@dataclass
class TrialRecord:
    """One stored trial."""

    key: str
    method: str
    params: dict[str, Any]
    status: str
    attempts: int
    result: dict[str, Any] | None
    score: float | None
    seconds: float | None
    output: str | None
    error: str | None


def default_storage(sweep_dir: str | Path) -> str:
    """The SQLite URL of a sweep directory's own database file."""
    return f"sqlite:///{Path(sweep_dir).resolve() / 'sweep.db'}"


class ResultsStore:
    """Trials of one or more sweeps in a SQLAlchemy database.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path.db``, ``postgresql://...``).

    Raises:
        StorageError: the URL is malformed, its driver is missing, or the database cannot be
            opened or created (e.g. the directory of a SQLite file does not exist).
    """

    def __init__(self, url: str):
        import sqlalchemy as sa

        self.url = url
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError:
            raise StorageError(
                f"storage URL {url!r} is not a database URL; use sqlite:///path/to/sweep.db "
                "or postgresql://user@host/dbname"
            ) from None
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            parent = Path(parsed.database).expanduser().resolve().parent
            if not parent.is_dir():
                raise StorageError(
                    f"storage URL {url!r}: directory {parent} does not exist; create it or "
                    "point --storage at an existing directory"
                )
        # Fail within seconds on an unreachable server instead of hanging on the driver default.
        is_sqlite = parsed.get_backend_name() == "sqlite"
        connect_args = {"timeout": 30} if is_sqlite else {"connect_timeout": 10}
        try:
            self.engine = sa.create_engine(url, connect_args=connect_args, future=True)
        except (ImportError, sa.exc.NoSuchModuleError) as err:
            raise StorageError(
                f"storage URL {url!r}: no database driver for it ({err}); install the driver "
                "(e.g. pip install psycopg2-binary for postgresql://) or use sqlite:///"
            ) from None
        except sa.exc.ArgumentError as err:
            raise StorageError(f"storage URL {url!r}: {err}") from None
        meta = sa.MetaData()
        self.trials = sa.Table(
            "unmemorize_trials",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("sweep", sa.String(64), nullable=False),
            sa.Column("key", sa.String(128), nullable=False),
            sa.Column("method", sa.String(64), nullable=False),
            sa.Column("params", sa.Text, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False, default=0),
            sa.Column("result", sa.Text),
            sa.Column("score", sa.Float),
            sa.Column("seconds", sa.Float),
            sa.Column("output", sa.Text),
            sa.Column("error", sa.Text),
            sa.Column("worker", sa.String(128)),
            sa.Column("updated", sa.Float),
            sa.UniqueConstraint("sweep", "key", name="uq_trial"),
        )
        self.sweeps = sa.Table(
            "unmemorize_sweeps",
            meta,
            sa.Column("sweep", sa.String(64), primary_key=True),
            sa.Column("spec", sa.Text, nullable=False),
            sa.Column("created", sa.Float),
        )
        try:
            meta.create_all(self.engine)
        except sa.exc.SQLAlchemyError as err:
            reason = str(getattr(err, "orig", err)).splitlines()[0]
            raise StorageError(
                f"cannot open storage {url!r}: {reason}; check the URL, that the server is up "
                "and that you may write there"
            ) from None

    # -- sweeps -------------------------------------------------------------------------------

    def register_sweep(self, sweep: str, spec: dict) -> None:
        """Record a sweep's spec (once); a different spec under the same id is an error."""
        import sqlalchemy as sa

        text = json.dumps(spec, sort_keys=True)
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(self.sweeps.c.spec).where(self.sweeps.c.sweep == sweep)
            ).first()
            if row is None:
                conn.execute(
                    self.sweeps.insert().values(sweep=sweep, spec=text, created=time.time())
                )
            elif row[0] != text:
                raise StorageError(f"the store already holds a different sweep with id {sweep}")

    # -- trials -------------------------------------------------------------------------------

    def add_pending(self, sweep: str, key: str, method: str, params: dict) -> bool:
        """Insert a trial as pending unless ``(sweep, key)`` is stored; True when inserted."""
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(self.trials.c.id).where(
                    (self.trials.c.sweep == sweep) & (self.trials.c.key == key)
                )
            ).first()
            if exists:
                return False
            conn.execute(
                self.trials.insert().values(
                    sweep=sweep,
                    key=key,
                    method=method,
                    params=json.dumps(params, sort_keys=True),
                    status="pending",
                    attempts=0,
                    updated=time.time(),
                )
            )
        return True

    def _update(self, sweep: str, key: str, **values: Any) -> None:
        import sqlalchemy as sa

        values["updated"] = time.time()
        with self.engine.begin() as conn:
            n = conn.execute(
                sa.update(self.trials)
                .where((self.trials.c.sweep == sweep) & (self.trials.c.key == key))
                .values(**values)
            ).rowcount
        if n != 1:
            raise KeyError(f"trial {key} of sweep {sweep} is not in the store")

    def mark_running(self, sweep: str, key: str) -> None:
        """Record that a trial was submitted (counts an attempt and names this coordinator)."""
        self._update(
            sweep,
            key,
            status="running",
            attempts=self.trials.c.attempts + 1,
            worker=f"{socket.gethostname()}:{os.getpid()}",
            error=None,
        )

    def complete(
        self, sweep: str, key: str, result: dict, score: float, seconds: float, output: str
    ) -> None:
        """Store a finished trial's result row (JSON), score, seconds and output path."""
        self._update(
            sweep,
            key,
            status="complete",
            result=json.dumps(result, default=_json_default),
            score=None if score is None or math.isnan(score) else float(score),
            seconds=float(seconds),
            output=output,
            error=None,
        )

    def fail(self, sweep: str, key: str, error: str) -> None:
        self._update(sweep, key, status="failed", error=error[:2000])

    def requeue(self, sweep: str, statuses: tuple[str, ...] = ("running", "failed")) -> int:
        """Put trials in ``statuses`` back to pending (a re-run retries them); returns the count."""
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            return conn.execute(
                sa.update(self.trials)
                .where((self.trials.c.sweep == sweep) & self.trials.c.status.in_(statuses))
                .values(status="pending", updated=time.time())
            ).rowcount

    def records(self, sweep: str, status: str | None = None) -> list[TrialRecord]:
        """Trials of a sweep in insertion order (optionally only one status)."""
        import sqlalchemy as sa

        query = sa.select(self.trials).where(self.trials.c.sweep == sweep)
        if status is not None:
            query = query.where(self.trials.c.status == status)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(self.trials.c.id)).mappings().all()
        return [
            TrialRecord(
                key=r["key"],
                method=r["method"],
                params=json.loads(r["params"]),
                status=r["status"],
                attempts=r["attempts"],
                result=json.loads(r["result"]) if r["result"] else None,
                score=r["score"],
                seconds=r["seconds"],
                output=r["output"],
                error=r["error"],
            )
            for r in rows
        ]

    def counts(self, sweep: str) -> dict[str, int]:
        """Number of trials per status."""
        out = dict.fromkeys(STATUSES, 0)
        for record in self.records(sweep):
            out[record.status] += 1
        return out

    def close(self) -> None:
        self.engine.dispose()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)


__all__ = ["ResultsStore", "StorageError", "TrialRecord", "default_storage", "STATUSES"]
