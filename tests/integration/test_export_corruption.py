"""The corruption catalogue at the file level: every defect an MT5 export can carry, through the
door a user takes (``tx ingest`` + ``tx validate`` with ``TX_MT5_EXPORTS`` pointing at a folder).

A module-scoped platform holds two clean days of EURUSD M5 (Monday 2026-01-05 and Tuesday
2026-01-06) in the lake, the offline store and a private Redis (db 13), ingested from a clean
export file. Each case writes the same export with one defect on Wednesday 2026-01-07 (the day
under test) into its own folder and runs, through the Typer CLI, ``tx ingest`` and ``tx
validate`` for that day, then ``tx features build`` and ``tx features materialize`` as the
market_data DAG does. A defect must end with the day quarantined with its reason (the rejected
line's number and raw text for a line the importer refused), and nothing of the day in the lake,
the offline store or Redis. The clean file passes; repairs (an identical duplicate, rows out of
order) pass with a record in the day's flags; a file without a spread column is refused unless a
source is configured.

The existing staged-level catalogue (``tests/integration/test_validation.py``) is repeated here
from a file for every rule a file can trigger; soft rules run with that rule set to hard, as a
user would (``TX_VALIDATION_SEVERITY``). Rules a file cannot trigger are listed in
``NOT_FROM_A_FILE`` with the reason.
"""

from __future__ import annotations

import json
import math
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
from typer.testing import CliRunner

from engine.mt5.exports import read_export
from feature_repo.pipeline import lake
from feature_repo.pipeline.expectations import RULES
from feature_repo.pipeline.store import feast_apply, materialize
from tests.conftest import make_settings, redis_newest_event_time, run_market_data
from titanovax.cli import app
from titanovax.settings import PlatformSettings

pytestmark = pytest.mark.integration

SYM, TF = "EURUSD", "M5"
HISTORY_START = datetime(2026, 1, 5, tzinfo=UTC)  # Monday
DAY = datetime(2026, 1, 7, tzinfo=UTC)  # Wednesday: the day under test
NEXT = DAY + timedelta(days=1)
REDIS_DB = 13
HEADER = "time,open,high,low,close,tick_volume,spread,real_volume"
BARS_PER_DAY = 288


def _clean_lines() -> list[str]:
    """Monday 2026-01-05 00:00 to Friday 01:00 UTC of EURUSD M5 (server time = UTC): a random
    walk with an FX-like hour profile of ticks and a spread of 8-19 points."""
    rng = np.random.default_rng(11)
    px = 1.17
    lines = []
    t = HISTORY_START
    end = datetime(2026, 1, 9, 1, tzinfo=UTC)
    while t < end:
        o = round(px, 5)
        c = round(o * math.exp(rng.normal(0, 0.0002)), 5)
        h = round(max(o, c) + abs(rng.normal(0, 0.0001)), 5)
        lo = round(min(o, c) - abs(rng.normal(0, 0.0001)), 5)
        tv = int(60 + 50 * math.sin(math.pi * t.hour / 24) + rng.integers(0, 20))
        sp = int(rng.integers(8, 20))
        lines.append(f"{t:%Y-%m-%d %H:%M:%S},{o:.5f},{h:.5f},{lo:.5f},{c:.5f},{tv},{sp},0")
        px = c
        t += timedelta(minutes=5)
    return lines


CLEAN = _clean_lines()
D0 = 2 * BARS_PER_DAY  # index of the day's first line in CLEAN


def _at(hh: int, mm: int = 0) -> int:
    """Index in the data lines of the day's bar at hh:mm."""
    return D0 + (hh * 60 + mm) // 5


def _fields(line: str) -> list[str]:
    return line.split(",")


def _set(lines: list[str], i: int, **values: object) -> list[str]:
    names = HEADER.split(",")
    f = _fields(lines[i])
    for k, v in values.items():
        f[names.index(k)] = str(v)
    lines[i] = ",".join(f)
    return lines


def _px(lines: list[str], i: int, col: str) -> float:
    return float(_fields(lines[i])[HEADER.split(",").index(col)])


# --- defects: each takes the clean data lines and returns the defective ones ---------------------


def _nan_price(x: list[str]) -> list[str]:
    return _set(x, _at(10), close="nan")


def _non_positive_price(x: list[str]) -> list[str]:
    return _set(x, _at(10), low="0.00000")


def _high_below_low(x: list[str]) -> list[str]:
    i = _at(10)
    return _set(x, i, high=_fields(x[i])[3], low=_fields(x[i])[2])


def _close_above_high(x: list[str]) -> list[str]:
    i = _at(10)
    return _set(x, i, close=f"{_px(x, i, 'high') + 0.001:.5f}")


def _open_below_low(x: list[str]) -> list[str]:
    i = _at(10)
    return _set(x, i, open=f"{_px(x, i, 'low') - 0.001:.5f}")


def _negative_spread(x: list[str]) -> list[str]:
    return _set(x, _at(10), spread=-3)


def _bad_time(x: list[str]) -> list[str]:
    return _set(x, _at(10), time="2026-01-07 25:00:00")


def _too_few_fields(x: list[str]) -> list[str]:
    i = _at(10)
    x[i] = ",".join(_fields(x[i])[:4])
    return x


def _off_grid(x: list[str]) -> list[str]:
    return _set(x, _at(10), time="2026-01-07 10:01:00")


def _duplicate_with_other_values(x: list[str]) -> list[str]:
    i = _at(10)
    other = _set(list(x), i, close=_fields(x[i])[2])  # the close moved to the open
    x.insert(i + 1, other[i])
    return x


def _every_line_of_the_day_rejected(x: list[str]) -> list[str]:
    for i in range(D0, D0 + BARS_PER_DAY):
        _set(x, i, high="n/a")
    return x


def _bar_at_one_and_a_half_times_the_price(x: list[str]) -> list[str]:
    i = _at(10)
    return _set(x, i, **{c: f"{_px(x, i, c) * 1.5:.5f}" for c in ("open", "high", "low", "close")})


def _frozen(x: list[str], first: int, bars: int) -> list[str]:
    px = _fields(x[first - 1])[4]
    for i in range(first, min(first + bars, len(x))):
        _set(x, i, open=px, high=px, low=px, close=px)  # ticks keep arriving
    return x


def _frozen_300(x: list[str]) -> list[str]:
    return _frozen(x, D0, 300)


def _frozen_10(x: list[str]) -> list[str]:
    return _frozen(x, _at(2), 10)


def _hole_on_a_weekday(x: list[str]) -> list[str]:
    return x[: _at(10)] + x[_at(12) :]


def _spread_spike(x: list[str]) -> list[str]:
    return _set(x, _at(10), spread=900)


def _price_jump(x: list[str]) -> list[str]:
    i = _at(10)
    c = _px(x, i, "close") * 1.02
    return _set(x, i, close=f"{c:.5f}", high=f"{max(c, _px(x, i, 'high')):.5f}")


def _identical_duplicate(x: list[str]) -> list[str]:
    x.insert(_at(10) + 1, x[_at(10)])
    return x


def _out_of_order(x: list[str]) -> list[str]:
    i = _at(10)
    x[i], x[i + 1] = x[i + 1], x[i]
    return x


@dataclass(frozen=True)
class Defect:
    rule: str
    corrupt: Callable[[list[str]], list[str]]
    severity: str = ""  # TX_VALIDATION_SEVERITY for the run (a soft rule made hard)
    line_rejected: bool = True  # the importer refused a line: its number and text are kept


CATALOGUE = {
    "nan_price": Defect("rejected_line", _nan_price),
    "non_positive_price": Defect("ohlc_consistency", _non_positive_price),
    "high_below_low": Defect("ohlc_consistency", _high_below_low),
    "close_above_high": Defect("ohlc_consistency", _close_above_high),
    "open_below_low": Defect("ohlc_consistency", _open_below_low),
    "negative_spread": Defect("spread_non_negative", _negative_spread),
    "unparsable_time": Defect("rejected_line", _bad_time),
    "too_few_fields": Defect("rejected_line", _too_few_fields),
    "time_off_the_grid": Defect("timeframe_alignment", _off_grid),
    "duplicate_time_other_values": Defect("duplicate_conflict", _duplicate_with_other_values),
    "every_line_of_the_day_rejected": Defect("rejected_line", _every_line_of_the_day_rejected),
    "bar_at_1_5x_the_price": Defect(
        "price_jump_absurd", _bar_at_one_and_a_half_times_the_price, line_rejected=False
    ),
    "300_frozen_bars": Defect("frozen_prices_long", _frozen_300, line_rejected=False),
    # the staged-level catalogue's soft rules, made hard as a user would
    "hole_on_a_weekday": Defect(
        "calendar_gap", _hole_on_a_weekday, "calendar_gap=hard", line_rejected=False
    ),
    "spread_spike": Defect("spread_spike", _spread_spike, "spread_spike=hard", line_rejected=False),
    "price_jump_2pct": Defect("price_jump", _price_jump, "price_jump=hard", line_rejected=False),
    "10_frozen_bars": Defect(
        "frozen_prices", _frozen_10, "frozen_prices=hard", line_rejected=False
    ),
    # repairs are soft by default (see the passing test below); hard when configured so
    "identical_duplicate_made_hard": Defect(
        "import_repaired", _identical_duplicate, "import_repaired=hard"
    ),
    "out_of_order_made_hard": Defect("import_repaired", _out_of_order, "import_repaired=hard"),
}

NOT_FROM_A_FILE = {
    "schema": "the importer always produces the lake's columns and dtypes, never a null",
    "unique_increasing_time": "the importer drops identical duplicates (import_repaired), "
    "rejects different ones (duplicate_conflict) and sorts (import_repaired)",
    "forming_bar": "a terminal's still-forming bar: ingest leaves it out; the staged-level "
    "catalogue validates before it closes",
    "tz_shift": "a broker clock change, not a line defect: the staged-level catalogue ingests "
    "a terminal whose clock moved",
}


def _write_export(folder: Path, lines: list[str], header: str = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{SYM}_{TF}__corruption.csv"
    path.write_text(header + "\n" + "\n".join(lines) + "\n")
    return path


def _env(s: PlatformSettings, exports: Path, **extra: str) -> dict[str, str]:
    return {
        "TX_HOME": str(s.home),
        "TX_REDIS_URL": s.require_redis_url(),
        "TX_MT5_MODE": "sim",
        "TX_MT5_EXPORTS": str(exports),
        "TX_SYMBOLS": SYM,
        "TX_TIMEFRAME": TF,
        "TX_BROKER_TZ": "fixed:+0",
        "TX_VALIDATION_SEVERITY": "",
        **extra,
    }


def _tx(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args), env=env)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def _day_args() -> list[str]:
    return ["--start", f"{DAY:%Y-%m-%d}", "--end", f"{NEXT:%Y-%m-%d}"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> PlatformSettings:
    root = tmp_path_factory.mktemp("export_corruption")
    clean = root / "clean"
    _write_export(clean, CLEAN)
    s = make_settings(
        root / "home",
        redis_url,
        db=REDIS_DB,
        symbols=[SYM],
        timeframe=TF,
        mt5_exports=clean,
        broker_tz="fixed:+0",
    )
    redis.Redis.from_url(s.require_redis_url()).flushdb()
    feast_apply(s)
    run_market_data(s, HISTORY_START, DAY)
    return s


@pytest.fixture
def platform(base: PlatformSettings) -> Iterator[PlatformSettings]:
    """The base platform with nothing of the day anywhere and Redis at the history."""
    for root in (base.staging_dir, base.lake_dir, base.quarantine_dir):
        lake.remove_partition(root, SYM, TF, DAY.date())
    for f in base.offline_features_dir.parent.rglob(f"*{DAY.date().isoformat()}*"):
        f.unlink() if f.is_file() else shutil.rmtree(f)
    lake.column_sources_path(base.lake_dir, SYM, TF).unlink(missing_ok=True)
    redis.Redis.from_url(base.require_redis_url()).flushdb()
    materialize(base, HISTORY_START, DAY, TF)
    yield base


def _offline_event_times(s: PlatformSettings) -> pd.Series:
    files = sorted(s.offline_features_dir.parent.rglob("*.parquet"))
    return pd.concat(
        [
            pq.read_table(f, columns=["event_timestamp"]).to_pandas()["event_timestamp"]
            for f in files
        ]
    )


def _features_downstream(env: dict[str, str], *, quarantined: bool = True) -> None:
    """The DAG's next tasks over the day, through the CLI: on a quarantined day there is no
    feature row to build nor to materialise, which the CLI reports as nothing done (exit 3)."""
    for cmd in ("build", "materialize"):
        code, _, err = _tx(env, "features", cmd, *_day_args())
        if quarantined:
            assert code == 3 and "no feature row" in err, (cmd, code, err)
        else:
            assert code == 0, err


def _assert_nothing_of_the_day_downstream(s: PlatformSettings) -> None:
    assert lake.read_partition(s.lake_dir, SYM, TF, DAY.date()) is None
    assert lake.read_bars(s.lake_dir, SYM, TF, DAY, NEXT).empty
    assert _offline_event_times(s).max() <= pd.Timestamp(
        DAY
    )  # the history's last bar closes at DAY
    assert redis_newest_event_time(s) == DAY.timestamp()


def test_catalogue_when_listed_then_every_rule_has_a_file_level_case_or_a_reason() -> None:
    assert {d.rule for d in CATALOGUE.values()} | set(NOT_FROM_A_FILE) == set(RULES)
    assert not {d.rule for d in CATALOGUE.values()} & set(NOT_FROM_A_FILE)


@pytest.mark.parametrize("case", list(CATALOGUE), ids=list(CATALOGUE))
def test_tx_ingest_validate_when_an_export_has_a_defect_then_the_day_is_quarantined_with_its_reason_and_nothing_reaches_lake_offline_or_redis(
    platform: PlatformSettings, tmp_path: Path, case: str
) -> None:
    # Arrange: the export with one defect on the day
    d = CATALOGUE[case]
    lines = d.corrupt(list(CLEAN))
    _write_export(tmp_path / "exports", lines)
    changed = [  # (line number, text) of the lines that differ from the clean file's; header = 1
        (n + 2, ln) for n, ln in enumerate(lines) if n >= len(CLEAN) or ln != CLEAN[n]
    ]
    env = _env(platform, tmp_path / "exports", TX_VALIDATION_SEVERITY=d.severity)

    # Act: what a user runs
    ingested = _tx(env, "data", "ingest", *_day_args())
    validated = _tx(env, "data", "validate", *_day_args())
    listed = _tx(env, "data", "quarantine")

    # Assert: quarantined with the reason
    assert ingested[0] == 0, ingested[2]
    assert validated[0] == 1 and d.rule in validated[2], validated
    (entry,) = [q for q in json.loads(listed[1]) if q["date"] == DAY.date().isoformat()]
    assert d.rule in entry["hard_failures"]
    qdir = Path(entry["folder"])
    rejected = pd.read_parquet(qdir / "rejected.parquet")
    ours = rejected[rejected["reasons"].str.contains(f"{d.rule}: ", regex=False)]
    assert len(ours) >= 1
    if d.line_rejected:  # the refused line itself is kept: its number, raw text and reason
        assert {"line_no", "raw_line"} <= set(ours.columns)
        kept = set(
            zip(ours["line_no"].dropna().astype(int), ours["raw_line"].dropna(), strict=True)
        )
        assert kept & set(changed), (kept, changed[:3])
    info = json.loads((qdir / "validation.json").read_text())
    assert not info["success"] and d.rule in info["hard_failures"]
    assert not lake.partition_dir(platform.staging_dir, SYM, TF, DAY.date()).exists()

    # Assert: nothing of the day downstream after the DAG's next tasks
    _features_downstream(env)
    _assert_nothing_of_the_day_downstream(platform)


def test_tx_ingest_validate_when_the_export_is_clean_then_the_day_passes_with_no_flag_and_reaches_redis(
    platform: PlatformSettings, tmp_path: Path
) -> None:
    _write_export(tmp_path / "exports", list(CLEAN))
    env = _env(platform, tmp_path / "exports", TX_VALIDATION_SEVERITY="*=hard")

    ingested = _tx(env, "data", "ingest", *_day_args())
    validated = _tx(env, "data", "validate", *_day_args())
    _features_downstream(env, quarantined=False)

    assert ingested[0] == 0 and validated[0] == 0, (ingested, validated)
    (report,) = json.loads(validated[1])
    assert report["passed_rows"] == BARS_PER_DAY and report["flagged_rows"] == 0
    assert redis_newest_event_time(platform) == NEXT.timestamp()


@pytest.mark.parametrize("repair", [_identical_duplicate, _out_of_order], ids=["dup", "order"])
def test_tx_validate_when_the_importer_repaired_lines_then_the_day_passes_with_the_repairs_in_its_flags(
    platform: PlatformSettings, tmp_path: Path, repair: Callable[[list[str]], list[str]]
) -> None:
    _write_export(tmp_path / "exports", repair(list(CLEAN)))
    env = _env(platform, tmp_path / "exports")

    ingested = _tx(env, "data", "ingest", *_day_args())
    validated = _tx(env, "data", "validate", *_day_args())

    assert ingested[0] == 0 and json.loads(ingested[1])[0]["repaired_lines"] == 1
    assert validated[0] == 0, validated
    (report,) = json.loads(validated[1])
    assert report["soft_failures"] == {"import_repaired": 1} and report["passed_rows"] == 288
    flags = pd.read_parquet(
        lake.partition_dir(platform.lake_dir, SYM, TF, DAY.date()) / "flags.parquet"
    )
    (row,) = flags[flags["reasons"].str.startswith("import_repaired: ")].itertuples()
    assert row.severity == "soft" and int(row.line_no) == _at(10) + 3  # header + 1-based + 1


def test_tx_ingest_when_the_export_has_no_spread_column_then_it_is_refused_unless_a_source_is_configured(
    platform: PlatformSettings, tmp_path: Path
) -> None:
    # Arrange: the same bars without the spread column
    header = HEADER.replace(",spread", "")
    no_spread = [",".join(f for k, f in enumerate(_fields(ln)) if k != 6) for ln in CLEAN]
    _write_export(tmp_path / "exports", no_spread, header)
    env = _env(platform, tmp_path / "exports")

    # Act / Assert: refused with one clear line, nothing staged
    code, out, err = _tx(env, "data", "ingest", *_day_args())
    assert code == 1 and "no spread column" in err and "constant:N or symbol_info" in err
    assert not lake.partition_dir(platform.staging_dir, SYM, TF, DAY.date()).exists()
    code, _, err = _tx(env, "data", "validate", *_day_args())
    assert code == 1 and "nothing staged" in err
    assert lake.read_partition(platform.lake_dir, SYM, TF, DAY.date()) is None

    # a documented source: the value is used and recorded in the lake's metadata
    env["TX_MT5_SPREAD_SOURCE"] = "constant:15"
    code, out, err = _tx(env, "data", "ingest", *_day_args())
    assert code == 0 and json.loads(out)[0]["column_sources"] == {"spread": "constant:15"}
    assert _tx(env, "data", "validate", *_day_args())[0] == 0
    bars = lake.read_partition(platform.lake_dir, SYM, TF, DAY.date())
    assert bars is not None and (bars["spread"] == 15).all()
    rec = json.loads(lake.column_sources_path(platform.lake_dir, SYM, TF).read_text())
    assert rec["filled"] == {"spread": {"source": "constant:15", "value": 15}}


def test_ingest_when_a_terminal_answers_bad_bars_then_the_same_row_checks_quarantine_the_day(
    platform: PlatformSettings, tmp_path: Path
) -> None:
    """The native/bridge path: bars come from a terminal's ``copy_rates_range``, not a file.
    A simulated terminal (the same MT5 API) serves an in-memory array with a NaN close and a
    negative spread on the day; ingest's row checks keep them out and validation quarantines."""
    from engine.mt5.exports import Export
    from engine.mt5.gateway import open_terminal
    from engine.mt5.sim import ExportFeed
    from feature_repo.pipeline.ingest import ingest
    from feature_repo.pipeline.validate import BatchQuarantined, validate_interval

    clean = read_export(_write_export(tmp_path / "exports", list(CLEAN)))
    rates = clean.rates.copy()
    i_nan, i_spread = _at(10), _at(11)
    rates["close"][i_nan] = np.nan
    rates["spread"][i_spread] = -7
    feed = ExportFeed([Export(SYM, TF, rates, clean.source)], server_utc_offset_hours=0)
    term = open_terminal(
        "sim", sim_feed=feed, clock=lambda: int(NEXT.timestamp()) + 7200, server_utc_offset_hours=0
    )

    result = ingest(platform, SYM, TF, DAY, NEXT, terminal=term)
    with pytest.raises(BatchQuarantined) as exc:
        validate_interval(platform, SYM, TF, DAY, NEXT)

    assert result.rejected_lines == 2 and result.rows == BARS_PER_DAY - 2
    (part,) = exc.value.report.partitions
    assert {"rejected_line", "spread_non_negative"} <= set(part["hard_failures"])
    qdir = lake.partition_dir(platform.quarantine_dir, SYM, TF, DAY.date())
    rejected = pd.read_parquet(qdir / "rejected.parquet")
    terminal_rows = rejected[rejected["source"] == "terminal"]
    # line_no: the row's position in the terminal's answer for the day
    assert sorted(terminal_rows["line_no"].astype(int)) == [i_nan - D0 + 1, i_spread - D0 + 1]
    assert lake.read_partition(platform.lake_dir, SYM, TF, DAY.date()) is None
