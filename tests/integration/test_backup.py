"""``tx backup``: an online SQLite backup while a writer keeps writing is consistent, a
restore round-trip through the CLI gives back the journal, a real MLflow store (run, params,
artifact), the Feast registry and the audit log with checksums and row counts verified, a
damaged backup is refused, retention deletes only old backups, and the PostgreSQL path
(``pg_dump`` in one snapshot, ``pg_restore``) round-trips a journal that is being written."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from titanovax.backup import (
    BackupError,
    BackupSettings,
    Sources,
    list_backups,
    prune,
    restore,
    restore_postgres,
    run,
)

pytestmark = pytest.mark.integration

PG = "postgresql://postgres@127.0.0.1:5432"


class Writer:
    """Keeps writing pairs of rows (one in ``a``, one in ``b``) in one transaction each,
    so any consistent copy has as many rows in ``a`` as in ``b``."""

    def __init__(self, connect: object, placeholder: str = "?", txn: object = None) -> None:
        self.connect = connect
        self.ph = placeholder
        self.txn = txn or (lambda conn: conn)  # sqlite3: `with conn` is one transaction
        self.stop = threading.Event()
        self.written = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        try:
            conn = self.connect()  # type: ignore[operator]
            pad = "x" * 400
            while not self.stop.is_set():
                with self.txn(conn):  # type: ignore[operator]  # both rows or neither
                    conn.execute(f"INSERT INTO a (pad) VALUES ({self.ph})", (pad,))
                    conn.execute(f"INSERT INTO b (pad) VALUES ({self.ph})", (pad,))
                self.written += 1
            conn.close()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def wait(self, n: int, timeout: float = 60.0) -> None:
        """Until ``n`` pairs are written (fails on the writer's error or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.written < n:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"writer stuck at {self.written}"
            time.sleep(0.005)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def _sqlite_journal(path: Path, rows: int = 20_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")  # as the engine's journal
        db.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, pad TEXT)")
        db.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, pad TEXT)")
        pad = "y" * 400
        with db:
            db.executemany("INSERT INTO a (pad) VALUES (?)", [(pad,)] * rows)
            db.executemany("INSERT INTO b (pad) VALUES (?)", [(pad,)] * rows)


def _counts(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("a", "b")}


def _sources(home: Path, journal: str | None = None) -> Sources:
    return Sources(
        journal=journal or str(home / "engine" / "journal.sqlite"),
        mlflow_backend=None,
        mlflow_artifacts=home / "mlartifacts",
        feast_registry=home / "feast" / "registry.db",
        audit_logs=(home / "registry" / "alias_audit.jsonl",),
    )


def test_sqlite_backup_when_a_writer_keeps_writing_then_the_copy_is_consistent(
    tmp_path: Path,
) -> None:
    # Arrange: an ~16 MB WAL journal and a writer committing pairs of rows without pause
    home = tmp_path / "home"
    journal = home / "engine" / "journal.sqlite"
    _sqlite_journal(journal)
    writer = Writer(lambda: sqlite3.connect(journal, timeout=30))

    # Act: back up while it writes
    with writer:
        writer.wait(200)
        out = run(tmp_path / "backups", _sources(home), BackupSettings(), prune_after=False)
        during = writer.written
        writer.wait(during + 200)  # it kept going after the copy
    assert writer.error is None, writer.error

    # Assert: the copy is a snapshot: both tables equal, between the start and the end
    copy = Path(out["path"]) / out["components"]["journal"]["file"]
    counts = _counts(copy)
    assert counts["a"] == counts["b"], counts
    assert 20_000 + 200 <= counts["a"] < _counts(journal)["a"]
    assert out["components"]["journal"]["row_counts"] == counts
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A TX_HOME with a SQLite journal, a real MLflow store (run with a param and an
    artifact), a Feast registry file and the alias audit log."""
    import mlflow

    h = tmp_path / "home"
    _sqlite_journal(h / "engine" / "journal.sqlite", rows=50)
    mlflow.set_tracking_uri(f"sqlite:///{h / 'mlflow.db'}")
    exp = mlflow.create_experiment("tx_backup", artifact_location=str(h / "mlartifacts"))
    with mlflow.start_run(experiment_id=exp) as r:
        mlflow.log_param("depth", 4)
        mlflow.log_text("model bytes", "model/model.txt")
    (h / "run_id").write_text(r.info.run_id)
    (h / "feast").mkdir()
    (h / "feast" / "registry.db").write_bytes(os.urandom(2048))
    (h / "registry").mkdir()
    (h / "registry" / "alias_audit.jsonl").write_text(
        json.dumps({"at": "2026-12-06T00:00:00+00:00", "alias": "champion", "version": "3"}) + "\n"
    )
    return h


def _env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("TX_JOURNAL", "TX_BACKUP", "TX_MLFLOW")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("TX_HOME", str(home))


def test_backup_cli_when_run_listed_and_restored_then_everything_round_trips_verified(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from titanovax.cli import app

    _env(home, monkeypatch)
    cli = CliRunner()

    # Act: run, list, restore into a new home
    ran = cli.invoke(app, ["backup", "run"])
    listed = cli.invoke(app, ["backup", "list", "--json"])
    target = tmp_path / "restored"
    restored = cli.invoke(app, ["backup", "restore", "latest", "--target", str(target)])

    # Assert
    assert ran.exit_code == 0, ran.output
    assert "journal           sqlite" in ran.output and "mlflow            sqlite" in ran.output
    rows = json.loads(listed.stdout)
    assert len(rows) == 1
    assert rows[0]["components"] == {
        "journal": "sqlite",
        "mlflow": "sqlite",
        "mlflow_artifacts": "files",
        "feast_registry": "files",
        "audit": "files",
    }
    manifest = json.loads((Path(rows[0]["path"]) / "manifest.json").read_text())
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"])
    assert restored.exit_code == 0, restored.output
    assert "journal           rows match (100)" in restored.output
    assert _counts(target / "engine" / "journal.sqlite") == {"a": 50, "b": 50}
    run_id = (home / "run_id").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{target / 'mlflow.db'}")
    assert client.get_run(run_id).data.params == {"depth": "4"}
    art = list((target / "mlartifacts").rglob("model.txt"))
    assert len(art) == 1 and art[0].read_text() == "model bytes"
    assert (target / "feast" / "registry.db").read_bytes() == (
        home / "feast" / "registry.db"
    ).read_bytes()
    assert (target / "registry" / "alias_audit.jsonl").read_text() == (
        home / "registry" / "alias_audit.jsonl"
    ).read_text()

    # a second restore over it is refused without --force, and names the option
    again = cli.invoke(app, ["backup", "restore", "latest", "--target", str(target)])
    assert again.exit_code == 1 and "--force" in again.output


def test_restore_when_a_file_of_the_backup_is_damaged_then_refused_naming_it(
    home: Path, tmp_path: Path
) -> None:
    out = run(tmp_path / "backups", _sources(home), BackupSettings(), prune_after=False)
    registry = Path(out["path"]) / "feast" / "registry.db"
    data = bytearray(registry.read_bytes())
    data[100] ^= 0xFF
    registry.write_bytes(bytes(data))

    with pytest.raises(BackupError, match=r"feast/registry.db: checksum mismatch"):
        restore(Path(out["path"]), tmp_path / "restored")
    assert not (tmp_path / "restored").exists()  # nothing written before the check


def test_retention_when_pruned_then_only_old_backups_beyond_keep_last_go(
    home: Path, tmp_path: Path
) -> None:
    # Arrange: six backups a day apart, and a folder that is not a backup
    dest = tmp_path / "backups"
    now = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    ids = []
    for days_ago in (10, 8, 6, 4, 2, 0):
        out = run(
            dest,
            _sources(home),
            BackupSettings(),
            now=now - timedelta(days=days_ago),
            prune_after=False,
        )
        ids.append(out["id"])
    (dest / "notes").mkdir()

    # Act: keep the newest 2 and anything younger than 5 days
    gone = prune(dest, keep_last=2, keep_days=5, now=now)

    # Assert: the 10, 8 and 6 day old backups went; the 4 day old one stays (age)
    assert gone == ids[:3]
    assert [b["id"] for b in list_backups(dest)] == ids[3:]
    assert (dest / "notes").is_dir()
    # keep_last protects old backups too
    assert prune(dest, keep_last=3, keep_days=0, now=now + timedelta(days=30)) == []


@pytest.fixture
def pg_dbs() -> Iterator[tuple[str, str]]:
    import psycopg

    src, dst = f"tx_ops_bk{os.getpid()}_journal", f"tx_ops_bk{os.getpid()}_restored"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
        for db in (src, dst):
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{db}"')
    try:
        yield f"{PG}/{src}", f"{PG}/{dst}"
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as c:
            for db in (src, dst):
                c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_pg_dump_when_a_writer_keeps_writing_then_restore_gives_the_snapshot_row_counts(
    pg_dbs: tuple[str, str], tmp_path: Path
) -> None:
    import psycopg

    src, dst = pg_dbs
    with psycopg.connect(src, autocommit=True) as c:
        c.execute("CREATE TABLE a (id SERIAL PRIMARY KEY, pad TEXT)")
        c.execute("CREATE TABLE b (id SERIAL PRIMARY KEY, pad TEXT)")
        c.execute("INSERT INTO a (pad) SELECT repeat('y', 400) FROM generate_series(1, 5000)")
        c.execute("INSERT INTO b (pad) SELECT repeat('y', 400) FROM generate_series(1, 5000)")
    writer = Writer(
        lambda: psycopg.connect(src), placeholder="%s", txn=lambda conn: conn.transaction()
    )

    with writer:
        writer.wait(50)
        out = run(
            tmp_path / "backups",
            Sources(src, None, None, None, ()),
            BackupSettings(),
            prune_after=False,
        )
        during = writer.written
        writer.wait(during + 50)
    assert writer.error is None, writer.error

    journal = out["components"]["journal"]
    assert journal["kind"] == "postgres" and journal["source"] == src
    counts = journal["row_counts"]
    assert counts["a"] == counts["b"] >= 5050

    # restore through the CLI's path into the second (empty) database
    restored = restore(Path(out["path"]), tmp_path / "r", journal_url=dst)
    assert restored["components"]["journal"]["row_counts"] == counts
    with psycopg.connect(src) as c:
        assert c.execute("SELECT COUNT(*) FROM a").fetchone()[0] > counts["a"]  # kept writing
    with pytest.raises(BackupError, match="already has tables"):
        restore_postgres(Path(out["path"]) / journal["file"], dst)
    with pytest.raises(BackupError, match="give --journal-url"):
        restore(Path(out["path"]), tmp_path / "r2")
