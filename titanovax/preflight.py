"""Preconditions the ``tx`` commands check before any work starts.

Each check is cheap (a PING, a file test, one registry call, a folder listing) and raises a
:class:`~titanovax.errors.TxError` that says what is missing and which command provides it,
so a mistake costs a second and one line instead of minutes of work and a trace.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

from titanovax.errors import TxError
from titanovax.settings import PlatformSettings


def redis_reachable(settings: PlatformSettings, timeout_s: float = 2.0) -> str:
    """``TX_REDIS_URL`` is set and its server answers PING; returns the URL."""
    import redis

    url = settings.require_redis_url()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s).ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise TxError(
            f"Redis at {url} is not reachable ({exc})",
            "start it (e.g. `redis-server --port 6379 --daemonize yes`) or point TX_REDIS_URL "
            "at a running server",
        ) from exc
    return url


def feast_applied(settings: PlatformSettings) -> Path:
    """The Feast registry of ``TX_HOME`` exists (``tx features apply`` has run)."""
    if not settings.feast_registry.is_file():
        raise TxError(
            f"the Feast repo is not applied in {settings.home} (no {settings.feast_registry})",
            "run `tx features apply` first",
        )
    return settings.feast_registry


def experiment_config(name_or_path: str) -> Any:
    """The experiment YAML, by name (``training/configs/<name>.yaml``) or path."""
    from training.config import CONFIG_DIR, load_config

    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise TxError(
            f"no experiment config {name_or_path!r} ({path} does not exist)",
            f"use --config with one of {known} or a YAML path",
            exit_code=2,
        )
    return load_config(path)


def lake_days(settings: PlatformSettings, symbol: str, timeframe: str) -> list[date]:
    """The UTC days the bar lake holds for ``symbol``/``timeframe``, sorted."""
    root = settings.lake_dir / f"symbol={symbol}" / f"timeframe={timeframe}"
    days = []
    for p in root.glob("date=*/bars.parquet"):
        try:
            days.append(date.fromisoformat(p.parent.name.removeprefix("date=")))
        except ValueError:
            continue
    return sorted(days)


def history_covers(settings: PlatformSettings, cfg: Any, as_of: datetime | None) -> None:
    """The lake holds the experiment's whole window (train start → test end) for every
    symbol, and the offline store of its feature service is built."""
    from feature_repo.pipeline.store import require_offline

    if as_of is None and (cfg.split.start is None or cfg.split.end is None):
        raise TxError(
            f"experiment {cfg.name} has no explicit train/test ranges",
            "give --as-of YYYY-MM-DD (the end of its test window)",
            exit_code=2,
        )
    r = cfg.ranges(as_of)
    first, last = r["train"][0].date(), r["test"][1].date()
    for sym in settings.symbols:
        days = lake_days(settings, sym, settings.timeframe)
        # the window's own ends may fall on a weekend: a week of slack on both sides
        if not days or (days[0] - first).days > 7 or (last - days[-1]).days > 7:
            held = f"{days[0]} → {days[-1]}" if days else "nothing"
            raise TxError(
                f"not enough history for {cfg.name}: it needs {sym} {settings.timeframe} "
                f"{first} → {last}, the lake holds {held}",
                f"run `tx data backfill --start {first} --end {last}`, or pick another --as-of",
            )
    try:
        require_offline(settings, cfg.feature_service)
    except ValueError as exc:
        raise TxError(
            str(exc).split(":")[0], "run `tx data backfill` or `tx features build`"
        ) from exc


def model_version_exists(settings: PlatformSettings, version: str) -> None:
    """The registered model has ``version``."""
    from mlflow.exceptions import MlflowException

    from training.registry import client_for

    client = client_for(settings)
    name = settings.model_name
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    except MlflowException as exc:
        raise TxError(f"the registry at {settings.tracking_uri} cannot be read: {exc}") from exc
    if not versions:
        raise TxError(
            f"no version of model {name} is registered",
            "train one with `tx models train --as-of YYYY-MM-DD`",
        )
    if not str(version).isdigit() or int(version) not in versions:
        shown = ", ".join(map(str, versions[-10:]))
        raise TxError(
            f"model {name} has no version {version}",
            f"registered versions: {shown}; see `tx models history`",
        )
