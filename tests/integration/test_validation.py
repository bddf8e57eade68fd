"""Validation on the real data path: a corruption catalogue (one case per rule), the soft path,
the quarantine folder, and release.

A module-scoped platform holds four clean days of EURUSD M5 (Sunday 2026-01-04 to Wednesday
2026-01-07) in the lake, the offline store and Redis (db 11). Each case stages Thursday
2026-01-08 with the real ingest, corrupts the staged partition, and runs validate → features →
materialise exactly as the market_data DAG does.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis

from feature_repo.pipeline import lake
from feature_repo.pipeline.calendar import calendar_for, easter_sunday
from feature_repo.pipeline.expectations import (
    IMPORT_RULES,
    RULES,
    ValidationConfigError,
    load_config,
)
from feature_repo.pipeline.ingest import ingest
from feature_repo.pipeline.store import build_features, feast_apply, materialize
from feature_repo.pipeline.validate import (
    BatchQuarantined,
    list_quarantine,
    release_partition,
    validate_interval,
)
from tests.conftest import make_settings, redis_newest_event_time, run_market_data
from titanovax.settings import PlatformSettings

pytestmark = pytest.mark.integration

SYM, TF = "EURUSD", "M5"
HISTORY_START = datetime(2026, 1, 4, tzinfo=UTC)  # Sunday: the week opens at 22:00 UTC
DAY = datetime(2026, 1, 8, tzinfo=UTC)  # Thursday: the batch under test
NEXT = DAY + timedelta(days=1)
REDIS_DB = 11


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> PlatformSettings:
    s = make_settings(tmp_path_factory.mktemp("validation"), redis_url, db=REDIS_DB, symbols=[SYM])
    redis.Redis.from_url(s.require_redis_url()).flushdb()
    feast_apply(s)
    run_market_data(s, HISTORY_START, DAY)
    return s


@pytest.fixture
def platform(base: PlatformSettings) -> Iterator[PlatformSettings]:
    """The base platform with nothing of the batch day anywhere and Redis at the history."""
    for root in (base.staging_dir, base.lake_dir, base.quarantine_dir):
        lake.remove_partition(root, SYM, TF, DAY.date())
    (base.quarantine_dir / "releases.jsonl").unlink(missing_ok=True)
    for f in base.offline_features_dir.parent.rglob(f"*{DAY.date().isoformat()}*"):  # every view
        f.unlink() if f.is_file() else shutil.rmtree(f)
    redis.Redis.from_url(base.require_redis_url()).flushdb()
    materialize(base, HISTORY_START, DAY, TF)
    yield base


def _staged(s: PlatformSettings) -> pd.DataFrame:
    df = lake.read_partition(s.staging_dir, SYM, TF, DAY.date())
    assert df is not None and len(df) == 288
    return df


def _restage(s: PlatformSettings, df: pd.DataFrame, *, keep_dtypes: bool = False) -> None:
    path = lake.partition_dir(s.staging_dir, SYM, TF, DAY.date()) / "bars.parquet"
    if keep_dtypes:  # write as is: the schema suite must judge what was written
        lake.write_parquet_atomic(df.reset_index(drop=True), path)
    else:
        lake.write_partition(s.staging_dir, df.reset_index(drop=True), SYM, TF, DAY.date())


def _redis_event_time(s: PlatformSettings) -> float:
    """The newest event time any feature view holds in Redis."""
    newest = redis_newest_event_time(s)
    assert newest > 0, "nothing in Redis"
    return newest


def _offline_event_times(s: PlatformSettings) -> pd.Series:
    files = sorted(s.offline_features_dir.parent.rglob("*.parquet"))  # every view
    return pd.concat(
        [
            pq.read_table(f, columns=["event_timestamp"]).to_pandas()["event_timestamp"]
            for f in files
        ]
    )


def _downstream(s: PlatformSettings) -> None:
    """The market_data tasks after validation, for the batch day."""
    build_features(s, SYM, TF, DAY, NEXT)
    materialize(s, DAY, NEXT, TF)


def _assert_nothing_of_the_day_downstream(s: PlatformSettings) -> None:
    assert lake.read_partition(s.lake_dir, SYM, TF, DAY.date()) is None
    assert lake.read_bars(s.lake_dir, SYM, TF, DAY, NEXT).empty
    assert _offline_event_times(s).max() <= pd.Timestamp(
        DAY
    )  # the history's last bar closes at DAY
    assert _redis_event_time(s) == DAY.timestamp()


# --- the corruption catalogue ----------------------------------------------------------------


def _spread_as_float(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(spread=df["spread"].astype("float64"))


def _null_close(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[40, "close"] = np.nan
    return df


def _high_below_low(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[100, "high"] = df.loc[100, "low"] - 0.001
    return df


def _duplicate_bar(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df.iloc[:51], df.iloc[50:51], df.iloc[51:]], ignore_index=True)


def _off_grid(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[100, ["time", "close_time"]] += pd.Timedelta(seconds=60)
    df.loc[100, "server_time"] += 60
    return df


def _hole_on_a_weekday(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(index=range(120, 144))  # Thursday 10:00-11:55 UTC: the market is open


def _negative_spread(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[77, "spread"] = -5
    return df


def _spread_spike(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[150, "spread"] = 900
    return df


def _price_jump(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[200, "close"] = round(df.loc[200, "close"] * 1.02, 5)
    df.loc[200, "high"] = max(df.loc[200, "high"], df.loc[200, "close"])
    return df


def _frozen(df: pd.DataFrame, first: int = 160, bars: int = 10) -> pd.DataFrame:
    px = df.loc[first - 1, "close"]
    df.loc[first : first + bars - 1, ["open", "high", "low", "close"]] = (
        px  # identical bars, ticks still counted
    )
    return df


def _absurd_jump(df: pd.DataFrame) -> pd.DataFrame:
    for col in ("open", "high", "low", "close"):
        df.loc[200, col] = round(float(df.loc[200, col]) * 1.5, 5)  # a bar at 1.5x the price
    return df


def _frozen_long(df: pd.DataFrame) -> pd.DataFrame:
    return _frozen(df, first=20, bars=60)


@dataclass(frozen=True)
class Corruption:
    rule: str
    corrupt: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    bad_rows: tuple[int, ...] = ()  # positions in the corrupted frame that must carry the rule
    keep_dtypes: bool = False


CATALOGUE = {
    "schema_dtype": Corruption("schema", _spread_as_float, keep_dtypes=True),
    "schema_null": Corruption("schema", _null_close, (40,), keep_dtypes=True),
    "ohlc_consistency": Corruption("ohlc_consistency", _high_below_low, (100,)),
    "unique_increasing_time": Corruption("unique_increasing_time", _duplicate_bar, (50, 51)),
    "timeframe_alignment": Corruption("timeframe_alignment", _off_grid, (100,)),
    "calendar_gap": Corruption("calendar_gap", _hole_on_a_weekday, (120,)),
    "spread_non_negative": Corruption("spread_non_negative", _negative_spread, (77,)),
    "spread_spike": Corruption("spread_spike", _spread_spike, (150,)),
    "price_jump": Corruption("price_jump", _price_jump, (200,)),
    "price_jump_absurd": Corruption("price_jump_absurd", _absurd_jump, (200, 201)),
    "frozen_prices": Corruption("frozen_prices", _frozen, tuple(range(160, 170))),
    "frozen_prices_long": Corruption("frozen_prices_long", _frozen_long, tuple(range(20, 80))),
    "forming_bar": Corruption("forming_bar", None, (287,)),
    "tz_shift": Corruption("tz_shift", None),
}


def test_catalogue_when_listed_then_every_rule_has_a_case() -> None:
    # the rules that judge only rejected/repaired import lines have their cases at the file
    # level: tests/integration/test_export_corruption.py
    assert {c.rule for c in CATALOGUE.values()} == set(RULES) - set(IMPORT_RULES)


@pytest.mark.parametrize("case", list(CATALOGUE), ids=list(CATALOGUE))
def test_validate_when_a_batch_is_corrupted_then_the_rule_catches_it_and_nothing_reaches_lake_offline_or_redis(
    platform: PlatformSettings, case: str
) -> None:
    c = CATALOGUE[case]
    s = platform.model_copy(update={"validation_severity": "*=hard"})  # every rule quarantines here
    as_of = None
    if c.rule == "tz_shift":
        # the broker moved its server clock by 3 h and nobody told the platform
        from engine.mt5.gateway import open_terminal
        from engine.mt5.sim import SyntheticFeed

        feed = SyntheticFeed(seed=s.synthetic_seed, symbols=[SYM], server_utc_offset_hours=5)
        ingest(
            s,
            SYM,
            TF,
            DAY,
            NEXT,
            terminal=open_terminal(
                "sim",
                sim_feed=feed,
                clock=lambda: int(NEXT.timestamp()) + 3600,
                server_utc_offset_hours=5,
            ),
        )
    else:
        ingest(s, SYM, TF, DAY, NEXT)
    if c.rule == "forming_bar":
        as_of = NEXT - timedelta(minutes=2)  # the 23:55 bar has not closed yet at validation time
    elif c.corrupt is not None:
        _restage(s, c.corrupt(_staged(s).copy()), keep_dtypes=c.keep_dtypes)

    with pytest.raises(BatchQuarantined) as exc:
        validate_interval(s, SYM, TF, DAY, NEXT, as_of=as_of)

    (part,) = exc.value.report.partitions
    assert c.rule in part["hard_failures"], part
    assert c.rule in str(exc.value)
    qdir = lake.partition_dir(s.quarantine_dir, SYM, TF, DAY.date())
    info = json.loads((qdir / "validation.json").read_text())
    assert c.rule in info["hard_failures"] and not info["success"]
    rejected = pd.read_parquet(qdir / "rejected.parquet")
    assert {"reasons", "severity", "close"} <= set(rejected.columns)
    assert rejected["reasons"].str.contains(f"{c.rule}: ").any()
    staged_rows = pq.read_table(qdir / "bars.parquet").num_rows
    assert len(rejected) <= staged_rows
    if c.bad_rows:
        stored = pq.read_table(qdir / "bars.parquet").to_pandas()
        bad_times = set(stored.iloc[list(c.bad_rows)]["server_time"])
        flagged = rejected[rejected["reasons"].str.contains(f"{c.rule}: ")]
        assert bad_times <= set(flagged["server_time"]), (
            bad_times,
            flagged[["server_time", "reasons"]],
        )
    docs = (qdir / "data_docs" / "index.html").read_text()
    assert "Data documentation compiled by Great Expectations" in docs  # the failing suite's page
    assert ("mt5_bars_schema_v2" if c.rule == "schema" else "mt5_bars_v2") in docs
    assert not (lake.partition_dir(s.staging_dir, SYM, TF, DAY.date())).exists()

    _downstream(s)
    _assert_nothing_of_the_day_downstream(s)


def test_validate_when_the_batch_is_clean_then_it_passes_with_zero_flags_and_reaches_redis(
    platform: PlatformSettings,
) -> None:
    s = platform.model_copy(update={"validation_severity": "*=hard"})
    ingest(s, SYM, TF, DAY, NEXT)
    report = validate_interval(s, SYM, TF, DAY, NEXT)
    assert report.passed_rows == 288 and report.quarantined_rows == 0 and report.flagged_rows == 0
    part = lake.partition_dir(s.lake_dir, SYM, TF, DAY.date())
    info = json.loads((part / "validation.json").read_text())
    assert info["success"] and info["failures"] == [] and not (part / "flags.parquet").exists()
    assert info["stats"]["tz_shift_hours"] == 0 and info["stats"]["history_bars"] > 3 * 288
    _downstream(s)
    assert _redis_event_time(s) == NEXT.timestamp()


def test_validate_when_a_soft_rule_fails_then_rows_are_flagged_a_warning_is_logged_and_the_batch_proceeds(
    platform: PlatformSettings, caplog: pytest.LogCaptureFixture
) -> None:
    s = platform  # default severities: spread_spike and frozen_prices are soft
    ingest(s, SYM, TF, DAY, NEXT)
    # frozen in the quiet Asian hours, so the move it hid is no price jump when the feed resumes
    _restage(s, _frozen(_spread_spike(_staged(s).copy()), first=20))
    with caplog.at_level(logging.WARNING, logger="feature_repo.pipeline.validate"):
        report = validate_interval(s, SYM, TF, DAY, NEXT)
    assert report.passed_rows == 288 and report.flagged_rows == 11
    assert report.soft_failures == {"spread_spike": 1, "frozen_prices": 10}
    assert any("flagged (soft)" in r.message for r in caplog.records)
    flags = pd.read_parquet(lake.partition_dir(s.lake_dir, SYM, TF, DAY.date()) / "flags.parquet")
    assert (
        set(flags["severity"]) == {"soft"}
        and flags["reasons"].str.startswith(("spread_spike", "frozen_prices")).all()
    )
    _downstream(s)
    assert _redis_event_time(s) == NEXT.timestamp()
    assert not list_quarantine(s)


def test_validate_when_a_severity_is_overridden_then_the_same_flag_quarantines(
    platform: PlatformSettings,
) -> None:
    s = platform.model_copy(update={"validation_severity": "spread_spike=hard"})
    ingest(s, SYM, TF, DAY, NEXT)
    _restage(s, _spread_spike(_staged(s).copy()))
    with pytest.raises(BatchQuarantined, match="spread_spike"):
        validate_interval(s, SYM, TF, DAY, NEXT)
    assert [q["date"] for q in list_quarantine(s)] == [DAY.date().isoformat()]


def test_release_when_the_quarantined_batch_is_fixed_then_it_moves_to_the_lake_and_the_release_is_recorded(
    platform: PlatformSettings,
) -> None:
    s = platform
    ingest(s, SYM, TF, DAY, NEXT)
    clean = _staged(s)
    _restage(s, _high_below_low(clean.copy()))
    with pytest.raises(BatchQuarantined):
        validate_interval(s, SYM, TF, DAY, NEXT)
    qdir = lake.partition_dir(s.quarantine_dir, SYM, TF, DAY.date())
    # releasing the unfixed batch is refused and keeps it quarantined
    with pytest.raises(BatchQuarantined):
        release_partition(s, SYM, TF, DAY.date())
    assert (qdir / "bars.parquet").exists()
    # the operator fixes the bar in the quarantine folder and releases it
    lake.write_partition(s.quarantine_dir, clean, SYM, TF, DAY.date())
    report = release_partition(s, SYM, TF, DAY.date())

    assert report.partitions[0]["released"]["how"] == "re-validated in quarantine"
    assert not qdir.exists() and not list_quarantine(s)
    bars = lake.read_partition(s.lake_dir, SYM, TF, DAY.date())
    assert bars is not None and bars.equals(clean)
    (rec,) = [json.loads(x) for x in (s.quarantine_dir / "releases.jsonl").read_text().splitlines()]
    assert (
        rec["date"] == DAY.date().isoformat()
        and "ohlc_consistency" in rec["previous_hard_failures"]
    )
    _downstream(s)
    assert _redis_event_time(s) == NEXT.timestamp()


def test_release_when_a_quarantined_day_is_reingested_clean_then_validation_releases_it(
    platform: PlatformSettings,
) -> None:
    s = platform
    ingest(s, SYM, TF, DAY, NEXT)
    _restage(s, _negative_spread(_staged(s).copy()))
    with pytest.raises(BatchQuarantined):
        validate_interval(s, SYM, TF, DAY, NEXT)
    ingest(s, SYM, TF, DAY, NEXT)  # the broker's data is fine now
    report = validate_interval(s, SYM, TF, DAY, NEXT)
    assert report.partitions[0]["released"]["how"] == "re-ingested batch passed"
    assert (
        not list_quarantine(s) and lake.read_partition(s.lake_dir, SYM, TF, DAY.date()) is not None
    )


# --- configuration and calendar ---------------------------------------------------------------


def test_config_when_overrides_name_unknown_rules_or_severities_then_they_are_refused() -> None:
    assert (
        load_config(severity_overrides="*=soft,ohlc_consistency=hard").severities()[
            "ohlc_consistency"
        ]
        == "hard"
    )
    assert load_config(severity_overrides="*=soft").severities()["tz_shift"] == "soft"
    with pytest.raises(ValidationConfigError):
        load_config(severity_overrides="no_such_rule=hard")
    with pytest.raises(ValidationConfigError):
        load_config(severity_overrides="price_jump=loud")
    assert load_config(severity_overrides="*=off").severity("schema") == "hard"
    with pytest.raises(ValidationConfigError, match="schema is always hard"):
        load_config(severity_overrides="schema=soft")


def test_config_when_a_yaml_overrides_a_threshold_then_it_is_merged_over_the_defaults(
    tmp_path: Path,
) -> None:
    p = tmp_path / "rules.yaml"
    p.write_text("rules:\n  price_jump:\n    k_sigma: 30\n")
    cfg = load_config(p)
    assert cfg.param("price_jump", "k_sigma") == 30 and cfg.severity("price_jump") == "soft"


def _utc(s: str) -> int:
    return int(pd.Timestamp(s, tz="UTC").timestamp())


@pytest.mark.parametrize(
    ("symbol", "gap_start", "gap_end", "allowed"),
    [
        (
            "EURUSD",
            "2026-01-09 22:00",
            "2026-01-11 22:00",
            True,
        ),  # weekend (winter: 17:00 NY = 22:00 UTC)
        ("EURUSD", "2025-07-11 21:00", "2025-07-13 21:00", True),  # weekend (summer: 21:00 UTC)
        ("EURUSD", "2025-12-24 18:00", "2025-12-26 06:00", True),  # Christmas
        ("EURUSD", "2025-12-31 18:00", "2026-01-02 07:00", True),  # New Year
        ("EURUSD", "2026-01-07 21:55", "2026-01-07 22:05", True),  # daily rollover break
        ("EURUSD", "2026-01-07 10:00", "2026-01-07 12:00", False),  # a weekday hole
        (
            "EURUSD",
            "2026-01-07 22:00",
            "2026-01-08 00:00",
            False,
        ),  # two hours are more than the FX break (+1 h tolerance)
        ("XAUUSD", "2026-01-07 22:00", "2026-01-07 23:00", True),  # gold's daily break
        ("XAUUSD", "2026-04-02 21:00", "2026-04-05 22:00", True),  # Good Friday (metals)
        ("EURUSD", "2026-04-03 12:00", "2026-04-03 14:00", False),  # FX trades on Good Friday
    ],
)
def test_calendar_when_bars_are_missing_then_only_closed_windows_are_allowed(
    symbol: str, gap_start: str, gap_end: str, allowed: bool
) -> None:
    got = calendar_for(symbol).covers(np.array([_utc(gap_start)]), np.array([_utc(gap_end)]))
    assert bool(got[0]) is allowed


def test_calendar_when_computing_easter_then_known_dates_come_out() -> None:
    assert [easter_sunday(y).isoformat() for y in (2024, 2025, 2026)] == [
        "2024-03-31",
        "2025-04-20",
        "2026-04-05",
    ]
