"""``tx backup run|list|restore|prune``: online backups of the platform's state.

What is state (everything else is rebuilt from the MT5 terminal or by a DAG run):

- the engine's **journal** (decisions, intents, the audit table): SQLite through the
  ``sqlite3`` backup API (a consistent page copy taken while the engine keeps writing; WAL
  readers are not blocked), or ``pg_dump`` of a PostgreSQL journal inside one exported
  snapshot, so the row counts in the manifest are those of the dump;
- the **MLflow** store: its backend (SQLite file or PostgreSQL database, the same two ways)
  and the artifacts folder (models, bundles, reports);
- the **Feast registry** (``feast/registry.db``);
- the **audit logs**: the model alias audit log (``registry/alias_audit.jsonl``).

Each backup is a folder ``<backup dir>/<UTC timestamp>/`` written under a ``.partial`` name
and renamed when complete (a crash never leaves a half backup that ``list`` shows), with a
``manifest.json``: every file with its size and sha256, and per component its kind, source
(passwords redacted) and row counts. ``restore`` checks every checksum first, then writes
into a target home (or PostgreSQL databases named on the command line) and verifies that the
restored journal and MLflow backend open and hold the manifest's row counts.

Retention (``TX_BACKUP_KEEP_LAST``, ``TX_BACKUP_KEEP_DAYS``): after each run, a backup is
deleted only when it is neither among the newest ``keep_last`` nor younger than
``keep_days`` days; only folders whose name is a backup timestamp are ever touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import typer
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from titanovax.settings import PlatformSettings

log = logging.getLogger(__name__)

ID_FORMAT = "%Y%m%dT%H%M%S%fZ"
ID_RE = re.compile(r"^\d{8}T\d{12}Z$")
MANIFEST = "manifest.json"


class BackupSettings(BaseSettings):
    """Where backups go and how many stay (documented in ``.env.example``)."""

    model_config = SettingsConfigDict(env_prefix="TX_BACKUP_", env_file=None, extra="ignore")

    dir: Path | None = Field(default=None, description="Backup folder; default $TX_HOME/backups.")
    keep_last: int = Field(
        default=7, ge=1, description="Retention: the newest N backups are always kept."
    )
    keep_days: float = Field(
        default=14.0,
        ge=0,
        description="Retention: backups younger than this many days are kept too; older ones "
        "beyond the newest TX_BACKUP_KEEP_LAST are deleted.",
    )
    mlflow_backend_uri: str | None = Field(
        default=None,
        description="MLflow's backend store when TX_MLFLOW_TRACKING_URI is a server (http://): "
        "sqlite:///path or postgresql://…; default: the tracking URI when it is a database.",
    )
    pg_dump: str = Field(default="pg_dump", description="pg_dump executable (PostgreSQL).")
    pg_restore: str = Field(default="pg_restore", description="pg_restore executable.")


class BackupError(RuntimeError):
    """A backup or restore could not complete; the message says what to do."""


# --- helpers ----------------------------------------------------------------------------------


def redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]+@", r"://\1:***@", url)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_pg(url: str) -> bool:
    return urlparse(url).scheme.split("+")[0] in ("postgresql", "postgres")


def _libpq(url: str) -> str:
    """A SQLAlchemy-style URL (postgresql+psycopg://) as libpq wants it."""
    u = urlparse(url)
    return u._replace(scheme="postgresql").geturl()


def _sqlite_path(url_or_path: str) -> Path:
    if url_or_path.startswith("sqlite:///"):
        return Path(url_or_path.removeprefix("sqlite:///"))
    return Path(url_or_path)


def _sqlite_counts(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        tables = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {t: int(db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]) for t in tables}


def _pg_counts(conn: Any) -> dict[str, int]:
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
    ]
    return {t: int(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]) for t in tables}


def backup_sqlite(source: Path, dest: Path) -> dict[str, int]:
    """Copy a live SQLite database with the backup API (consistent while writers go on);
    returns the copy's row counts per table after an integrity check."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(source, timeout=30)) as src,
        contextlib.closing(sqlite3.connect(dest)) as dst,
    ):
        # one step: in WAL mode the read snapshot does not block the writer, and a stepped
        # copy would restart on every write another connection makes (never finishing)
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    check = _sqlite_integrity(dest)
    if check != "ok":
        raise BackupError(f"the copy of {source} fails its integrity check: {check}")
    return _sqlite_counts(dest)


def _sqlite_integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def backup_postgres(url: str, dest: Path, pg_dump: str = "pg_dump") -> dict[str, int]:
    """``pg_dump -Fc`` of ``url`` inside one exported snapshot, so the row counts returned
    are exactly those of the dump even while writers go on."""
    import psycopg

    dest.parent.mkdir(parents=True, exist_ok=True)
    dsn = _libpq(url)
    try:
        conn = psycopg.connect(dsn, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise BackupError(f"PostgreSQL {redact(url)} not reachable: {exc}") from exc
    with conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        counts = _pg_counts(conn)
        try:
            proc = subprocess.run(
                [pg_dump, "-Fc", "--no-owner", f"--snapshot={snapshot}", "-f", str(dest), dsn],
                capture_output=True,
                text=True,
                timeout=3600,
                check=False,
            )
        except FileNotFoundError as exc:
            raise BackupError(
                f"{pg_dump} not found: install the PostgreSQL client or set TX_BACKUP_PG_DUMP"
            ) from exc
        conn.rollback()
    if proc.returncode != 0:
        raise BackupError(f"pg_dump of {redact(url)} failed: {proc.stderr.strip()[-1500:]}")
    return counts


def restore_postgres(dump: Path, url: str, pg_restore: str = "pg_restore") -> dict[str, int]:
    """Restore a dump into the (existing, empty) database ``url``; returns its row counts."""
    import psycopg

    dsn = _libpq(url)
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            if _pg_counts(conn):
                raise BackupError(
                    f"{redact(url)} already has tables: restore into a new, empty database"
                )
    except psycopg.OperationalError as exc:
        raise BackupError(
            f"PostgreSQL {redact(url)} not reachable ({exc}); create the database first "
            "(createdb) and pass its URL"
        ) from exc
    proc = subprocess.run(
        [pg_restore, "--no-owner", "--exit-on-error", "-d", dsn, str(dump)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise BackupError(f"pg_restore into {redact(url)} failed: {proc.stderr.strip()[-1500:]}")
    with psycopg.connect(dsn) as conn:
        return _pg_counts(conn)


# --- what to back up --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """Where the state lives (from the settings; tests build it directly)."""

    journal: str | None  # SQLite path or postgresql:// URL
    mlflow_backend: str | None  # sqlite:///… or postgresql://…
    mlflow_artifacts: Path | None
    feast_registry: Path | None
    audit_logs: tuple[Path, ...]

    @classmethod
    def from_settings(
        cls, ps: PlatformSettings | None = None, bs: BackupSettings | None = None
    ) -> Sources:
        from engine.config import EngineSettings
        from training.registry import audit_path

        ps = ps or PlatformSettings()
        bs = bs or BackupSettings()
        journal = EngineSettings(home=ps.home).journal_target
        uri = ps.tracking_uri
        backend = bs.mlflow_backend_uri or (
            uri if uri.startswith("sqlite:///") or _is_pg(uri) else None
        )
        return cls(
            journal=journal,
            mlflow_backend=backend,
            mlflow_artifacts=ps.mlflow_artifacts,
            feast_registry=ps.feast_registry,
            audit_logs=(audit_path(ps),),
        )


def _database(name: str, source: str | None, out: Path, bs: BackupSettings) -> dict[str, Any]:
    if not source:
        return {"kind": "skipped", "note": "not configured"}
    if _is_pg(source):
        rel = f"{name}/{name}.pgdump"
        counts = backup_postgres(source, out / rel, bs.pg_dump)
        return {"kind": "postgres", "source": redact(source), "file": rel, "row_counts": counts}
    path = _sqlite_path(source)
    if not path.exists():
        return {"kind": "skipped", "source": str(path), "note": "no database file yet"}
    rel = f"{name}/{path.name}"
    counts = backup_sqlite(path, out / rel)
    return {"kind": "sqlite", "source": str(path), "file": rel, "row_counts": counts}


def _files(name: str, sources: list[Path], out: Path) -> dict[str, Any]:
    copied: list[str] = []
    for src in sources:
        if src.is_dir():
            for f in sorted(p for p in src.rglob("*") if p.is_file()):
                rel = Path(name) / src.name / f.relative_to(src)
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out / rel)
                copied.append(str(rel))
        elif src.is_file():
            rel = Path(name) / src.name
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / rel)
            copied.append(str(rel))
    if not copied:
        return {"kind": "skipped", "source": [str(s) for s in sources], "note": "nothing there yet"}
    return {"kind": "files", "source": [str(s) for s in sources], "files": copied}


# --- run / list / prune / restore -------------------------------------------------------------


def backup_dir(ps: PlatformSettings | None = None, bs: BackupSettings | None = None) -> Path:
    bs = bs or BackupSettings()
    return bs.dir or (ps or PlatformSettings()).home / "backups"


def run(
    dest: Path,
    sources: Sources,
    bs: BackupSettings | None = None,
    now: datetime | None = None,
    prune_after: bool = True,
) -> dict[str, Any]:
    """Take one backup into ``dest/<UTC timestamp>/``; then apply retention. Returns the
    manifest (plus ``path`` and ``pruned``)."""
    bs = bs or BackupSettings()
    now = now or datetime.now(UTC)
    backup_id = now.strftime(ID_FORMAT)
    final = dest / backup_id
    partial = dest / f".{backup_id}.partial"
    if final.exists():
        raise BackupError(f"backup {final} exists already")
    partial.mkdir(parents=True)
    try:
        components = {
            "journal": _database("journal", sources.journal, partial, bs),
            "mlflow": _database("mlflow", sources.mlflow_backend, partial, bs),
            "mlflow_artifacts": _files(
                "mlflow_artifacts",
                [sources.mlflow_artifacts] if sources.mlflow_artifacts else [],
                partial,
            ),
            "feast_registry": _files(
                "feast", [sources.feast_registry] if sources.feast_registry else [], partial
            ),
            "audit": _files("audit", list(sources.audit_logs), partial),
        }
        files: list[dict[str, Any]] = [
            {
                "path": str(p.relative_to(partial)),
                "size": p.stat().st_size,
                "sha256": _sha256(p),
            }
            for p in sorted(partial.rglob("*"))
            if p.is_file()
        ]
        manifest = {
            "id": backup_id,
            "created_at": now.isoformat(),
            "components": components,
            "files": files,
            "bytes": sum(f["size"] for f in files),
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    pruned = prune(dest, bs.keep_last, bs.keep_days, now=now) if prune_after else []
    log.info("backup %s: %d files, %d bytes", final, len(files), manifest["bytes"])
    return {**manifest, "path": str(final), "pruned": pruned}


def _ids(dest: Path) -> list[str]:
    if not dest.is_dir():
        return []
    return sorted(
        p.name
        for p in dest.iterdir()
        if p.is_dir() and ID_RE.match(p.name) and (p / MANIFEST).exists()
    )


def list_backups(dest: Path) -> list[dict[str, Any]]:
    """Complete backups, oldest first: id, created_at, bytes, files, components."""
    out = []
    for bid in _ids(dest):
        m = json.loads((dest / bid / MANIFEST).read_text())
        out.append(
            {
                "id": bid,
                "created_at": m["created_at"],
                "bytes": m["bytes"],
                "files": len(m["files"]),
                "components": {k: v["kind"] for k, v in m["components"].items()},
                "path": str(dest / bid),
            }
        )
    return out


def prune(dest: Path, keep_last: int, keep_days: float, now: datetime | None = None) -> list[str]:
    """Delete backups that are neither among the newest ``keep_last`` nor younger than
    ``keep_days``; returns their ids. Leftover ``.partial`` folders of crashed runs older than
    a day go too. Nothing else in ``dest`` is touched."""
    now = now or datetime.now(UTC)
    ids = _ids(dest)
    cutoff = now - timedelta(days=keep_days)
    doomed = [
        bid
        for bid in ids[: max(0, len(ids) - keep_last)]
        if datetime.strptime(bid, ID_FORMAT).replace(tzinfo=UTC) < cutoff
    ]
    for bid in doomed:
        shutil.rmtree(dest / bid)
    if dest.is_dir():
        for p in dest.glob(".*.partial"):
            bid = p.name[1:].removesuffix(".partial")
            if ID_RE.match(bid) and datetime.strptime(bid, ID_FORMAT).replace(
                tzinfo=UTC
            ) < now - timedelta(days=1):
                shutil.rmtree(p, ignore_errors=True)
    return doomed


def verify(path: Path) -> dict[str, Any]:
    """Check every file of the backup against the manifest (size and sha256)."""
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: no readable {MANIFEST} ({exc})") from exc
    bad = []
    for f in m["files"]:
        p = path / f["path"]
        if not p.is_file():
            bad.append(f"{f['path']}: missing")
        elif p.stat().st_size != f["size"] or _sha256(p) != f["sha256"]:
            bad.append(f"{f['path']}: checksum mismatch")
    if bad:
        raise BackupError(f"backup {path.name} is damaged: " + "; ".join(bad))
    return dict(m)


def resolve(dest: Path, backup_id: str) -> Path:
    """``latest`` or a backup id → its folder."""
    ids = _ids(dest)
    if not ids:
        raise BackupError(f"no backups in {dest}: take one with `tx backup run`")
    bid = ids[-1] if backup_id == "latest" else backup_id
    if bid not in ids:
        raise BackupError(f"no backup {backup_id!r} in {dest}; `tx backup list` shows them")
    return dest / bid


def restore(
    path: Path,
    target_home: Path,
    *,
    journal_url: str | None = None,
    mlflow_url: str | None = None,
    force: bool = False,
    pg_restore: str = "pg_restore",
) -> dict[str, Any]:
    """Restore the backup at ``path`` into ``target_home`` (layout of ``TX_HOME``: the SQLite
    journal at ``engine/journal.sqlite``, ``mlflow.db``, ``mlartifacts/``, ``feast/``,
    ``registry/``); PostgreSQL dumps into ``journal_url`` / ``mlflow_url`` (existing empty
    databases). Checksums first; then each database is opened and its row counts compared
    with the manifest's. Returns what was restored and verified."""
    m = verify(path)
    comps = m["components"]
    plan: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    targets: list[Path] = []

    def db(name: str, sqlite_target: Path, pg_url: str | None, flag: str) -> None:
        c = comps[name]
        if c["kind"] == "sqlite":
            targets.append(sqlite_target)

            def do() -> dict[str, Any]:
                sqlite_target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path / c["file"], sqlite_target)
                check = _sqlite_integrity(sqlite_target)
                counts = _sqlite_counts(sqlite_target)
                return {"to": str(sqlite_target), "integrity": check, "row_counts": counts}

            plan.append((name, do))
        elif c["kind"] == "postgres":
            if not pg_url:
                raise BackupError(
                    f"the {name} backup is a PostgreSQL dump: give {flag} postgresql://…/<new db>"
                )
            plan.append(
                (
                    name,
                    lambda: {
                        "to": redact(pg_url),
                        "integrity": "ok",
                        "row_counts": restore_postgres(path / c["file"], pg_url, pg_restore),
                    },
                )
            )

    db("journal", target_home / "engine" / "journal.sqlite", journal_url, "--journal-url")
    db("mlflow", target_home / "mlflow.db", mlflow_url, "--mlflow-url")
    file_roots = {
        "mlflow_artifacts": target_home,  # mlflow_artifacts/mlartifacts/… → <home>/mlartifacts/…
        "feast_registry": target_home / "feast",  # feast/registry.db → <home>/feast/…
        "audit": target_home / "registry",  # audit/alias_audit.jsonl → <home>/registry/…
    }
    copies: list[tuple[Path, Path]] = []
    for name, root in file_roots.items():
        c = comps.get(name, {})
        for rel in c.get("files", []):
            parts = Path(rel).parts
            copies.append((path / rel, root / Path(*parts[1:])))
    targets += [to for _, to in copies]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise BackupError(
            f"{len(existing)} files exist in {target_home} (e.g. {existing[0]}): "
            "restore into an empty home, or pass --force to overwrite"
        )
    out: dict[str, Any] = {"id": m["id"], "target": str(target_home), "components": {}}
    for src, to in copies:
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, to)
    for name, do in plan:
        got = do()
        want = comps[name]["row_counts"]
        if got["integrity"] != "ok" or got["row_counts"] != want:
            raise BackupError(
                f"restored {name} does not match the backup: integrity {got['integrity']}, "
                f"rows {got['row_counts']} vs manifest {want}"
            )
        out["components"][name] = {**got, "verified": True}
    for name in file_roots:
        if comps.get(name, {}).get("kind") == "files":
            out["components"][name] = {"files": len(comps[name]["files"]), "verified": True}
    return out


# --- CLI --------------------------------------------------------------------------------------

backup_app = typer.Typer(
    help="Backups of the journal, MLflow store and artifacts, Feast registry and audit logs.",
    no_args_is_help=True,
)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1) from exc


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@backup_app.command("run")
def run_cmd(
    no_prune: Annotated[
        bool, typer.Option("--no-prune", help="Keep every backup (skip retention).")
    ] = False,
) -> None:
    """Take a backup now into $TX_BACKUP_DIR (default $TX_HOME/backups), then apply retention."""
    bs = BackupSettings()
    try:
        out = run(backup_dir(bs=bs), Sources.from_settings(bs=bs), bs, prune_after=not no_prune)
    except BackupError as exc:
        _fail(exc)
        return
    typer.echo(
        f"backup {out['id']}: {len(out['files'])} files, {_human(out['bytes'])} → {out['path']}"
    )
    for name, c in out["components"].items():
        rows = c.get("row_counts")
        extra = f" rows {sum(rows.values())}" if rows else ""
        typer.echo(f"  {name:<17} {c['kind']:<9}{extra} {c.get('note', '')}".rstrip())
    if out["pruned"]:
        typer.echo(f"retention deleted {len(out['pruned'])}: {', '.join(out['pruned'])}")


@backup_app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The complete backups, oldest first."""
    rows = list_backups(backup_dir())
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no backups in {backup_dir()}; take one with `tx backup run`")
        return
    for r in rows:
        kinds = ",".join(f"{k}={v}" for k, v in r["components"].items() if v != "skipped")
        typer.echo(f"{r['id']}  {_human(r['bytes']):>9}  {r['files']:>5} files  {kinds}")


@backup_app.command("restore")
def restore_cmd(
    backup_id: Annotated[str, typer.Argument(help="A backup id from `tx backup list`, or latest")],
    target: Annotated[
        Path, typer.Option("--target", help="Home to restore into (a new folder, not TX_HOME)")
    ],
    journal_url: Annotated[
        str | None,
        typer.Option(help="PostgreSQL journal dump: restore into this (empty) database URL"),
    ] = None,
    mlflow_url: Annotated[
        str | None,
        typer.Option(help="PostgreSQL MLflow dump: restore into this (empty) database URL"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files in --target")] = False,
) -> None:
    """Verify a backup's checksums, restore it into --target and check the row counts."""
    bs = BackupSettings()
    try:
        path = resolve(backup_dir(bs=bs), backup_id)
        out = restore(
            path,
            target.resolve(),
            journal_url=journal_url,
            mlflow_url=mlflow_url,
            force=force,
            pg_restore=bs.pg_restore,
        )
    except BackupError as exc:
        _fail(exc)
        return
    typer.echo(f"restored {out['id']} into {out['target']} (checksums verified)")
    for name, c in out["components"].items():
        rows = c.get("row_counts")
        detail = f"rows match ({sum(rows.values())})" if rows is not None else f"{c['files']} files"
        typer.echo(f"  {name:<17} {detail}")


@backup_app.command("prune")
def prune_cmd() -> None:
    """Apply retention now (TX_BACKUP_KEEP_LAST / TX_BACKUP_KEEP_DAYS)."""
    bs = BackupSettings()
    gone = prune(backup_dir(bs=bs), bs.keep_last, bs.keep_days)
    typer.echo(f"deleted {len(gone)}: {', '.join(gone)}" if gone else "nothing to delete")
