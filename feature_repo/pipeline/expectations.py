"""FX-aware Great Expectations suites for bar partitions, and their per-rule severities.

Validation runs in two Great Expectations suites on one day partition:

1. ``mt5_bars_schema_v2`` on the partition as stored: columns, dtypes, non-null values and the
   partition's symbol/timeframe. A failure here stops validation (nothing else can be trusted).
2. ``mt5_bars_v2`` on the partition plus *check columns* that :func:`annotate` derives with
   pandas from the partition and the symbol's lake history (the market calendar, robust
   statistics, the hour-of-day activity profile). Great Expectations does the checking on the
   raw columns and on those check columns; its ``unexpected_index_list`` gives the failing rows.

Every expectation carries ``meta={"rule": ...}``; a rule groups the expectations of one check
and has a severity (``hard``, ``soft`` or ``off``) from ``validation_rules.yaml``, overridable
with ``TX_VALIDATION_CONFIG`` / ``TX_VALIDATION_SEVERITY`` (see :func:`load_config`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from engine.mt5 import timeframe_seconds
from feature_repo.pipeline import lake
from feature_repo.pipeline.calendar import calendar_for

log = logging.getLogger(__name__)

SCHEMA_SUITE = "mt5_bars_schema_v2"
BARS_SUITE = "mt5_bars_v2"
DEFAULT_CONFIG = Path(__file__).with_name("validation_rules.yaml")
SEVERITIES = ("hard", "soft", "off")
RULES = (
    "schema",
    "ohlc_consistency",
    "unique_increasing_time",
    "timeframe_alignment",
    "calendar_gap",
    "spread_non_negative",
    "spread_spike",
    "price_jump",
    "price_jump_absurd",
    "frozen_prices",
    "frozen_prices_long",
    "forming_bar",
    "tz_shift",
    "rejected_line",
    "duplicate_conflict",
    "import_repaired",
)
IMPORT_RULES = ("rejected_line", "duplicate_conflict", "import_repaired")
"""Rules that judge only the lines ingest rejected or repaired (no Great Expectations suite)."""
PRICE_COLUMNS = ("open", "high", "low", "close")
# stored dtype of each lake column as Great Expectations' pandas engine names it
# ("Timestamp": a time zone-aware datetime column; the lake stores UTC)
SCHEMA_TYPES: dict[str, str] = {
    "time": "Timestamp",
    "close_time": "Timestamp",
    "symbol": "object",
    "timeframe": "object",
    "open": "float64",
    "high": "float64",
    "low": "float64",
    "close": "float64",
    "tick_volume": "int64",
    "spread": "int32",
    "real_volume": "int64",
    "server_time": "int64",
}
CHECK_COLUMNS = (
    "time_s",
    "grid_offset_s",
    "duration_s",
    "off_calendar_gap_bars",
    "spread_excess_points",
    "jump_sigmas",
    "absurd_jump_sigmas",
    "frozen_run_bars",
    "closes_after_as_of_s",
    "tz_shift_hours",
)


class ValidationConfigError(ValueError):
    """The validation configuration names an unknown rule or severity."""


@dataclass(frozen=True)
class ValidationConfig:
    """Rules with their severity and parameters, plus the history window."""

    history_days: int
    rules: dict[str, dict[str, Any]]

    def severity(self, rule: str) -> str:
        return str(self.rules[rule]["severity"])

    def param(self, rule: str, key: str) -> Any:
        return self.rules[rule][key]

    def severities(self) -> dict[str, str]:
        return {r: self.severity(r) for r in RULES}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_severity_overrides(text: str | None) -> dict[str, str]:
    """``"price_jump=hard, frozen_prices=off"`` → ``{rule: severity}``; ``*`` means every rule."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValidationConfigError(f"severity override {item!r} is not rule=severity")
        rule, sev = (x.strip().lower() for x in item.split("=", 1))
        if rule != "*" and rule not in RULES:
            raise ValidationConfigError(
                f"unknown validation rule {rule!r}; rules: {', '.join(RULES)}"
            )
        if sev not in SEVERITIES:
            raise ValidationConfigError(
                f"unknown severity {sev!r} for {rule}; use one of {SEVERITIES}"
            )
        out[rule] = sev
    return out


def load_config(
    path: Path | None = None, severity_overrides: str | dict[str, str] | None = None
) -> ValidationConfig:
    """The default rules, merged with the YAML at ``path`` and then the severity overrides."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    if path is not None:
        raw = _merge(raw, yaml.safe_load(Path(path).read_text()) or {})
    overrides = (
        parse_severity_overrides(severity_overrides)
        if isinstance(severity_overrides, str | None)
        else dict(severity_overrides)
    )
    rules: dict[str, dict[str, Any]] = raw["rules"]
    unknown = set(rules) - set(RULES)
    if unknown:
        raise ValidationConfigError(
            f"unknown validation rule(s) {sorted(unknown)}; rules: {', '.join(RULES)}"
        )
    if "*" in overrides:
        for r in rules:
            if r != "schema":  # a partition with the wrong schema can never enter the lake
                rules[r]["severity"] = overrides["*"]
    for r, sev in overrides.items():
        if r != "*":
            rules[r]["severity"] = sev
    if rules["schema"].get("severity") != "hard":
        raise ValidationConfigError(
            "rule schema is always hard: a partition with the wrong schema cannot enter the lake"
        )
    for r, spec in rules.items():
        if spec.get("severity") not in SEVERITIES:
            raise ValidationConfigError(
                f"rule {r}: severity must be one of {SEVERITIES}, got {spec.get('severity')!r}"
            )
    return ValidationConfig(history_days=int(raw.get("history_days", 14)), rules=rules)


def config_from_settings(settings: Any) -> ValidationConfig:
    """:func:`load_config` with ``TX_VALIDATION_CONFIG`` and ``TX_VALIDATION_SEVERITY``."""
    return load_config(
        getattr(settings, "validation_config", None), getattr(settings, "validation_severity", None)
    )


# --- Great Expectations suites -------------------------------------------------------------------


def build_schema_suite(symbol: str, timeframe: str) -> Any:
    """Columns, dtypes, non-null values, and the partition's own symbol and timeframe."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    m = {"rule": "schema"}
    suite = gx.ExpectationSuite(name=SCHEMA_SUITE)
    suite.add_expectation(
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(lake.BAR_COLUMNS), exact_match=True, meta=m
        )
    )
    for col, typ in SCHEMA_TYPES.items():
        suite.add_expectation(gxe.ExpectColumnValuesToBeOfType(column=col, type_=typ, meta=m))
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=col, meta=m))
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeInSet(column="symbol", value_set=[symbol], meta=m)
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeInSet(column="timeframe", value_set=[timeframe], meta=m)
    )
    return suite


def build_bars_suite(timeframe: str, cfg: ValidationConfig) -> Any:
    """The FX-aware suite over the partition and its check columns (rules not ``off``)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    step = timeframe_seconds(timeframe)
    suite = gx.ExpectationSuite(name=BARS_SUITE)

    def add(rule: str, *exps: Any) -> None:
        if cfg.severity(rule) == "off":
            return
        for e in exps:
            e.meta = {"rule": rule, "severity": cfg.severity(rule)}
            suite.add_expectation(e)

    add(
        "ohlc_consistency",
        *(
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True)
            for c in PRICE_COLUMNS
        ),
        *(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=a, column_B=b, or_equal=True)
            for a, b in (
                ("high", "low"),
                ("high", "open"),
                ("high", "close"),
                ("open", "low"),
                ("close", "low"),
            )
        ),
    )
    add(
        "unique_increasing_time",
        gxe.ExpectColumnValuesToBeUnique(column="time_s"),
        gxe.ExpectColumnValuesToBeIncreasing(column="time_s", strictly=True),
        gxe.ExpectColumnValuesToBeIncreasing(column="server_time", strictly=True),
    )
    add(
        "timeframe_alignment",
        gxe.ExpectColumnValuesToBeInSet(column="grid_offset_s", value_set=[0]),
        gxe.ExpectColumnValuesToBeInSet(column="duration_s", value_set=[step]),
    )
    add(
        "calendar_gap",
        gxe.ExpectColumnValuesToBeBetween(column="off_calendar_gap_bars", max_value=0),
    )
    add("spread_non_negative", gxe.ExpectColumnValuesToBeBetween(column="spread", min_value=0))
    add(
        "spread_spike",
        gxe.ExpectColumnValuesToBeBetween(column="spread_excess_points", max_value=0),
    )
    add(
        "price_jump",
        gxe.ExpectColumnValuesToBeBetween(
            column="jump_sigmas", max_value=float(cfg.param("price_jump", "k_sigma"))
        ),
    )
    add(
        "price_jump_absurd",
        gxe.ExpectColumnValuesToBeBetween(
            column="absurd_jump_sigmas",
            max_value=float(cfg.param("price_jump_absurd", "k_sigma")),
        ),
    )
    add(
        "frozen_prices",
        gxe.ExpectColumnValuesToBeBetween(
            column="frozen_run_bars", max_value=int(cfg.param("frozen_prices", "min_run")) - 1
        ),
    )
    add(
        "frozen_prices_long",
        gxe.ExpectColumnValuesToBeBetween(
            column="frozen_run_bars",
            max_value=int(cfg.param("frozen_prices_long", "min_run")) - 1,
        ),
    )
    add(
        "forming_bar", gxe.ExpectColumnValuesToBeBetween(column="closes_after_as_of_s", max_value=0)
    )
    shift = int(cfg.param("tz_shift", "min_shift_hours")) - 1
    add(
        "tz_shift",
        gxe.ExpectColumnValuesToBeBetween(
            column="tz_shift_hours", min_value=-shift, max_value=shift
        ),
    )
    return suite


# --- check columns ---------------------------------------------------------------------------------


def _epoch_s(col: pd.Series) -> np.ndarray:
    return np.asarray(col.astype("int64").to_numpy() // 10**9, dtype=np.int64)


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """For each True, the length of the run of consecutive Trues it belongs to (0 elsewhere)."""
    out = np.zeros(mask.size, dtype=np.int64)
    i = 0
    n = mask.size
    while i < n:
        if mask[i]:
            j = i
            while j < n and mask[j]:
                j += 1
            out[i:j] = j - i
            i = j
        else:
            i += 1
    return out


def hour_profile(times_s: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean ``log(1 + value)`` per UTC hour (tick volume, spread), centred on its mean over the
    hours (NaN: no bar in that hour)."""
    hours = (np.asarray(times_s, dtype=np.int64) // 3600) % 24
    lv = np.log1p(np.clip(np.asarray(values, dtype=float), 0, None))
    sums = np.bincount(hours, weights=lv, minlength=24)
    counts = np.bincount(hours, minlength=24)
    prof = np.full(24, np.nan)
    prof[counts > 0] = sums[counts > 0] / counts[counts > 0]
    return prof - np.nanmean(prof) if (counts > 0).any() else prof


def estimate_tz_shift(
    batch: np.ndarray, history: np.ndarray, min_hours: int, min_gain: float
) -> tuple[int, float]:
    """Hours ``s`` by which the batch's hour profile is shifted against the history's.

    ``batch[h] ≈ history[h - s]``; returns ``(s, gain)`` where gain is the correlation of the
    best shift minus that of no shift, or ``(0, 0.0)`` when the evidence is too thin."""
    scores: dict[int, float] = {}
    for s in range(-12, 12):
        hist = np.roll(history, s)
        ok = np.isfinite(batch) & np.isfinite(hist)
        if ok.sum() < min_hours or np.std(batch[ok]) == 0 or np.std(hist[ok]) == 0:
            continue
        scores[s] = float(np.corrcoef(batch[ok], hist[ok])[0, 1])
    if 0 not in scores or not scores:
        return 0, 0.0
    best = max(scores, key=lambda k: scores[k])
    gain = scores[best] - scores[0]
    if best == 0 or gain < min_gain:
        return 0, gain
    return best, gain


def annotate(
    df: pd.DataFrame,
    history: pd.DataFrame,
    symbol: str,
    timeframe: str,
    as_of_s: int,
    cfg: ValidationConfig,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The frame Great Expectations validates: raw numeric columns plus the check columns.

    ``history`` is the symbol's lake bars before the partition (possibly empty), sorted.
    Returns the frame (same index as ``df``) and the statistics behind the checks."""
    step = timeframe_seconds(timeframe)
    t = _epoch_s(df["time"])
    ct = _epoch_s(df["close_time"])
    hist_t = _epoch_s(history["time"]) if len(history) else np.empty(0, dtype=np.int64)
    out = pd.DataFrame(
        {
            "time_s": t,
            "server_time": df["server_time"].to_numpy(),
            **{c: df[c].to_numpy() for c in PRICE_COLUMNS},
            "tick_volume": df["tick_volume"].to_numpy(),
            "spread": df["spread"].to_numpy(),
        },
        index=df.index,
    )
    out["grid_offset_s"] = df["server_time"].to_numpy() % step
    out["duration_s"] = ct - t
    info: dict[str, Any] = {"history_bars": len(history)}

    # gaps: the missing span before each bar, against the market calendar
    order = np.argsort(t, kind="stable")
    ts = t[order]
    prev = (
        np.concatenate([hist_t[-1:], ts[:-1]])
        if len(hist_t)
        else np.concatenate([[ts[0] if len(ts) else 0], ts[:-1]])
    )
    has_prev = np.ones(len(ts), dtype=bool) if len(hist_t) else np.arange(len(ts)) > 0
    gap = (ts - prev > step) & has_prev
    tol = timedelta(minutes=float(cfg.param("calendar_gap", "tolerance_minutes")))
    covered = np.ones(len(ts), dtype=bool)
    if gap.any():
        covered[gap] = calendar_for(symbol, tol).covers(prev[gap] + step, ts[gap])
    missing = np.where(gap & ~covered, (ts - prev) // step - 1, 0)
    off_cal = np.zeros(len(t), dtype=np.int64)
    off_cal[order] = missing
    out["off_calendar_gap_bars"] = off_cal
    info["gaps"] = int(gap.sum())
    info["gaps_on_calendar"] = int((gap & covered).sum())

    # robust statistics over the recent history and the batch
    window = int(cfg.param("price_jump", "window_bars"))
    hist_tail = history.iloc[-window:] if len(history) else history
    spreads = np.concatenate(
        [
            hist_tail["spread"].to_numpy(float) if len(hist_tail) else np.empty(0),
            df["spread"].to_numpy(float),
        ]
    )
    med_spread = float(np.median(spreads)) if spreads.size else 0.0
    limit = max(
        float(cfg.param("spread_spike", "ratio")) * med_spread,
        med_spread + float(cfg.param("spread_spike", "min_points")),
    )
    out["spread_excess_points"] = np.clip(df["spread"].to_numpy(float) - limit, 0, None)
    info["spread_median"], info["spread_limit"] = med_spread, limit

    closes_sorted = df["close"].to_numpy(float)[order]
    opens_sorted = df["open"].to_numpy(float)[order]
    prev_close = np.concatenate(
        [history["close"].to_numpy(float)[-1:] if len(history) else [np.nan], closes_sorted[:-1]]
    )
    # across a closed-market gap (weekend, holiday, break) the reference is the bar's own open
    ref = np.where(gap & covered, opens_sorted, prev_close)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.log(closes_sorted / ref)
        hist_c = hist_tail["close"].to_numpy(float) if len(hist_tail) else np.empty(0)
        hist_r = np.log(hist_c[1:] / hist_c[:-1]) if hist_c.size > 1 else np.empty(0)
    pool = np.concatenate([hist_r, r])
    pool = pool[np.isfinite(pool)]
    med_r = float(np.median(pool)) if pool.size else 0.0
    sigma = 1.4826 * float(np.median(np.abs(pool - med_r))) if pool.size else 0.0
    z = np.abs(r - med_r) / sigma if sigma > 0 else np.zeros_like(r)
    jump = np.zeros(len(t))
    jump[order] = np.nan_to_num(z, nan=0.0, posinf=0.0)
    out["jump_sigmas"] = jump
    # absurd: far beyond the robust sigma AND a relative move no FX/metal bar makes
    min_move = float(cfg.param("price_jump_absurd", "min_log_move"))
    big = np.zeros(len(t), dtype=bool)
    with np.errstate(invalid="ignore"):
        big[order] = np.nan_to_num(np.abs(r - med_r), nan=0.0, posinf=0.0) > min_move
    out["absurd_jump_sigmas"] = np.where(big, jump, 0.0)
    info["return_sigma"] = sigma

    # frozen prices: bars identical to the previous close (O=H=L=C) while ticks arrive
    hs, ls = df["high"].to_numpy(float)[order], df["low"].to_numpy(float)[order]
    tv = df["tick_volume"].to_numpy()[order]
    same = (
        (opens_sorted == prev_close)
        & (hs == prev_close)
        & (ls == prev_close)
        & (closes_sorted == prev_close)
        & (tv > 0)
    )
    runs = np.zeros(len(t), dtype=np.int64)
    runs[order] = _run_lengths(same)
    out["frozen_run_bars"] = runs

    out["closes_after_as_of_s"] = np.clip(ct - as_of_s, 0, None)

    # timezone shift: the hour-of-day profiles of activity (tick volume) and of the spread
    # (its rollover widening) must both point to the same shift; on real exports either one
    # alone is fooled by holidays (see validation_rules.yaml). Short batches: the weekly open.
    shift, gain = 0, 0.0
    hist_days = len(np.unique(hist_t // 86400))
    # a holiday session (early close / late open) trades part of its hours: its hour profile says
    # nothing about the clock, and on the real exports it looked like a 2-3 h shift
    holiday = bool(len(t)) and calendar_for(symbol).holiday_session(
        int(t.min()), int(t.max()) + step
    )
    info["tz_shift_skipped_holiday"] = holiday
    if hist_days >= int(cfg.param("tz_shift", "min_history_days")) and len(t) and not holiday:
        min_hours, min_gain = (
            int(cfg.param("tz_shift", "min_batch_hours")),
            float(cfg.param("tz_shift", "min_gain")),
        )
        by_activity, gain = estimate_tz_shift(
            hour_profile(t, df["tick_volume"].to_numpy()),
            hour_profile(hist_t, history["tick_volume"].to_numpy()),
            min_hours,
            min_gain,
        )
        by_spread, spread_gain = estimate_tz_shift(
            hour_profile(t, df["spread"].to_numpy()),
            hour_profile(hist_t, history["spread"].to_numpy()),
            min_hours,
            min_gain,
        )
        info["tz_shift_by_activity"], info["tz_shift_by_spread"] = by_activity, by_spread
        info["tz_spread_gain"] = round(spread_gain, 4)
        shift = by_activity if by_activity == by_spread else 0
        if len(np.unique((t // 3600) % 24)) < min_hours:
            shift = _weekly_open_shift(hist_t, ts, step, symbol, tol)
    out["tz_shift_hours"] = shift
    info["tz_shift_hours"], info["tz_profile_gain"] = shift, round(gain, 4)
    return out, info


def _weekly_opens(times: np.ndarray, step: int) -> np.ndarray:
    """Hour of week (from Sunday 00:00 UTC) of each weekly open in sorted ``times``, with its
    position: a bar after a Friday/Saturday close (a 36 h to 4 day gap) whose week ran bar by
    bar into that close (so daily bars mixed into an intraday history do not count)."""
    if times.size < 3:
        return np.empty((0, 2))
    prev, prev2 = times[1:-1], times[:-2]
    cur = times[2:]
    prev_wd = ((prev // 86400) + 3) % 7  # 1970-01-01 was a Thursday: Monday = 0
    gap = cur - prev
    is_open = (
        (prev_wd >= 4)
        & (prev_wd <= 5)
        & (gap >= 36 * 3600)
        & (gap < 4 * 86400)
        & (prev - prev2 == step)
    )
    sunday0 = 3 * 86400  # 1970-01-04 00:00 UTC was a Sunday
    how = ((cur - sunday0) % (7 * 86400)) / 3600.0
    return np.column_stack([np.flatnonzero(is_open) + 2, how[is_open]])


def _weekly_open_shift(
    hist_t: np.ndarray,
    batch_t: np.ndarray,
    step: int,
    symbol: str = "EURUSD",
    tolerance: timedelta = timedelta(hours=1),
) -> int:
    """Hours between the batch's weekly open and the history's median weekly open (0: none).

    A weekly open that lies on the market calendar's open (Sunday 17:00 New York, metals
    18:00) within ``tolerance`` is right whatever the history says (0): a broker that moved its
    weekly open for good would otherwise have every later Sunday quarantined, and the history
    would never learn the new open."""
    both = np.concatenate([hist_t, batch_t])
    opens = _weekly_opens(both, step)
    if opens.size == 0:
        return 0
    in_batch = opens[:, 0] >= hist_t.size
    if not in_batch.any() or in_batch.all():
        return 0
    first_open = int(both[int(opens[in_batch, 0][0])])
    if calendar_for(symbol, tolerance).on_weekly_open(first_open):
        return 0
    d = float(opens[in_batch, 1][0] - np.median(opens[~in_batch, 1]))
    return round((d + 84) % 168 - 84)
