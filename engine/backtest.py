"""Backtest/paper helpers: an in-memory feature source, a model client that answers from
predictions scored up front, and the list of bar closes to replay.

The engine itself is the same in every mode; a backtest only swaps the world it is given:
a simulated terminal on a simulated clock, features precomputed in memory instead of read
from Redis, and (optionally) the model's answers for every bar computed in one batched ONNX
call before the replay (:class:`PrecomputedModel`), so it runs as fast as the engine's own
code allows.
"""

from __future__ import annotations

import gc
import logging
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from engine.features import FeatureRow, FeatureUnavailable
from engine.loop import Engine
from engine.mt5 import protocol as mt5
from engine.serving_client import CLASS_POSITIONS, OnnxModel, Prediction

log = logging.getLogger(__name__)


class ArrayFeatureSource:
    """Feature rows from arrays: ``read(symbol)`` returns the latest row whose event time is
    at or before ``clock()``, exactly as the online store would hold it at that instant.

    A read is a binary search on the row times (kept as a Python list) and one row turned into
    the name → value dict; which rows are all finite is computed once up front."""

    def __init__(
        self,
        names: list[str],
        tables: Mapping[str, tuple[np.ndarray, np.ndarray]],
        clock: Callable[[], float],
        sequences: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.names = list(names)
        self._tables = {
            s: (np.asarray(t, dtype=np.int64), np.asarray(v, dtype=np.float64))
            for s, (t, v) in tables.items()
        }
        self._seqs = {
            s: (np.asarray(t, dtype=np.int64), np.asarray(v, dtype=np.float32))
            for s, (t, v) in (sequences or {}).items()
        }
        self._clock = clock
        self._times = {s: t.tolist() for s, (t, _) in self._tables.items()}
        self._rows = {s: v.tolist() for s, (_, v) in self._tables.items()}  # as read()'s dict
        self._finite: dict[str, list[bool]] = {
            s: [bool(ok) for ok in np.asarray(np.isfinite(v).all(axis=1))]
            for s, (_, v) in self._tables.items()
        }

    def table(self, symbol: str) -> tuple[np.ndarray, np.ndarray]:
        """``(event times, rows)`` of ``symbol``."""
        return self._tables[symbol]

    def sequence_table(self, symbol: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(event times, sequences)`` of ``symbol``, if the source has sequences."""
        return self._seqs.get(symbol)

    @property
    def features(self) -> list[str]:
        """Feature names, in order."""
        return list(self.names)

    def read(self, symbol: str) -> FeatureRow:
        """The row the online store would hold now."""
        if symbol not in self._tables:
            raise FeatureUnavailable(f"no features for {symbol}")
        times = self._times[symbol]
        i = bisect_right(times, int(self._clock())) - 1
        if i < 0:
            raise FeatureUnavailable(f"no feature row for {symbol} before {self._clock():.0f}")
        t = times[i]
        if not self._finite[symbol][i]:
            raise FeatureUnavailable(f"{symbol}: non-finite feature at {t}")
        seq = None
        if self._seqs:  # the sequence of the same bar ([seq_len, channels]), or no row at all
            st, sv = self._seqs.get(
                symbol, (np.zeros(0, np.int64), np.zeros((0, 0, 0), np.float32))
            )
            j = int(np.searchsorted(st, t))
            if j >= len(st) or st[j] != t:
                raise FeatureUnavailable(f"{symbol}: no sequence row at {t}")
            seq = sv[j]
        return FeatureRow(
            symbol,
            float(t),
            dict(zip(self.names, self._rows[symbol][i], strict=True)),
            sequence=seq,
        )


class PrecomputedModel:
    """A model client for backtests that answers from predictions scored up front.

    The model is stateless (a row's answer depends on that row only), so a backtest may score
    every feature row of the run in one batched ONNX call (:meth:`score`) and let the engine,
    bar by bar, look its row's answer up instead of calling the model. The answer is the
    :class:`~engine.serving_client.Prediction` :meth:`OnnxModel.predict` would give: same
    argmax, ``min_confidence`` rule, probabilities, version and hash.

    A row is answered from the table only when it is the very row that was scored (same
    symbol, event time and values; with a sequence model, the same sequence); any other row is
    scored by the wrapped model, so a cached answer can never be the wrong one. :meth:`score`
    checks that batching does not change the graph's outputs: a few rows are scored one by one
    and compared bit for bit with the batch; if they differ (a graph whose kernels depend on
    the batch size), it scores row by row instead.
    """

    def __init__(
        self,
        model: OnnxModel,
        answers: Mapping[str, tuple[list[int], list[list[float]], np.ndarray]],
        sequences: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.model_version = model.model_version
        self.bundle_sha256 = model.bundle_sha256
        self._times = {s: {t: i for i, t in enumerate(ts)} for s, (ts, _, _) in answers.items()}
        self._values = {s: v for s, (_, v, _) in answers.items()}
        self._probs = {s: p for s, (_, _, p) in answers.items()}
        # per symbol, the answers' parts derived once for every row (argmax, confidence,
        # label, position, probabilities as floats): a bar only assembles its Prediction
        self._parts = {s: self._derive(p) for s, p in self._probs.items()}
        self._seqs = dict(sequences or {})
        self.hits = 0
        self.misses = 0

    def _derive(self, probs: np.ndarray) -> list[tuple[str, int, float, list[float]]]:
        """``(label, position, confidence, probabilities)`` of every row, as
        :meth:`OnnxModel.predict` derives them (first argmax, ``min_confidence`` rule)."""
        m = self.model
        probs = np.asarray(probs)
        if len(probs) == 0:
            return []
        k = probs.argmax(axis=1)
        conf = probs[np.arange(len(k)), k]
        out = []
        for ki, ci, row in zip(k.tolist(), conf.tolist(), probs.tolist(), strict=True):
            label = m.classes[ki] if ci >= m.min_confidence else "flat"
            out.append((label, CLASS_POSITIONS[label], ci, row))
        return out

    @classmethod
    def score(
        cls,
        model: OnnxModel,
        source: ArrayFeatureSource,
        symbols: list[str],
        *,
        check_rows: int = 8,
    ) -> PrecomputedModel:
        """Score every row of ``source`` for ``symbols`` in one ONNX call per symbol."""
        index = [source.names.index(f) for f in model.features]
        answers: dict[str, tuple[list[int], list[list[float]], np.ndarray]] = {}
        seqs: dict[str, np.ndarray] = {}
        for sym in symbols:
            times, values = source.table(sym)
            feeds: dict[str, np.ndarray] = {model.input_name: values[:, index].astype(np.float32)}
            if model.seq_input is not None:
                seq = source.sequence_table(sym)
                if seq is None or not np.array_equal(seq[0], times):
                    continue  # rows without their sequence: the model scores them bar by bar
                feeds[model.seq_input] = seq[1]
                seqs[sym] = seq[1]
            probs = _batched(model, feeds, check_rows)
            answers[sym] = (times.tolist(), values.tolist(), probs)
        return cls(model, answers, seqs)

    def predict(self, row: FeatureRow) -> Prediction:
        """The precomputed answer of ``row``, or the wrapped model's for a row not scored."""
        key = (row.symbol, int(row.event_time))
        i = self._times.get(row.symbol, {}).get(key[1]) if row.event_time == key[1] else None
        if (
            i is None
            or list(row.values.values()) != self._values[row.symbol][i]
            or (
                row.symbol in self._seqs
                and (
                    row.sequence is None
                    or not np.array_equal(row.sequence, self._seqs[row.symbol][i])
                )
            )
        ):
            self.misses += 1
            return self.model.predict(row)
        self.hits += 1
        m = self.model
        label, position, conf, probs = self._parts[row.symbol][i]
        explanation = m._explanation(row, self._probs[row.symbol][i], {})
        if m.policy is not None:  # the bundle's policy (per regime: from the explanation)
            label = m.label(self._probs[row.symbol][i], explanation)
            position = CLASS_POSITIONS[label]
        return Prediction(
            m.model_version,
            position,
            label,
            dict(zip(m.classes, probs, strict=True)),
            m.bundle_sha256,
            "onnx",
            conf,
            explanation,
            policy=m.policy,
        )


def _batched(model: OnnxModel, feeds: dict[str, np.ndarray], check_rows: int) -> np.ndarray:
    """The probabilities of every row: one batched call when a few rows scored alone give the
    same bits, else row by row."""
    n = len(next(iter(feeds.values())))
    if n == 0:
        return np.zeros((0, len(model.classes)), np.float32)
    probs = np.asarray(model.session.run([model.prob_output], feeds)[0])
    step = max(1, n // max(1, check_rows))
    for i in range(0, n, step):
        one = model.session.run([model.prob_output], {k: v[i : i + 1] for k, v in feeds.items()})
        if not np.array_equal(np.asarray(one[0])[0], probs[i]):
            log.warning("batched scores differ from single-row scores: scoring row by row")
            return np.concatenate(
                [
                    np.asarray(
                        model.session.run(
                            [model.prob_output], {k: v[j : j + 1] for k, v in feeds.items()}
                        )[0]
                    )
                    for j in range(n)
                ]
            )
    return probs


def bar_closes(
    terminal: mt5.Terminal,
    symbols: list[str],
    timeframe: int,
    start_utc: int,
    end_utc: int,
    offset_hours: int,
) -> list[int]:
    """UTC closes of the bars (any of ``symbols``) that close in ``(start_utc, end_utc]``.

    The terminal's clock must already stand at or after ``end_utc``."""
    off = int(offset_hours) * 3600
    step = mt5.timeframe_seconds(timeframe)
    closes: set[int] = set()
    for sym in symbols:
        rates = terminal.copy_rates_range(
            sym, timeframe, start_utc + off - step, end_utc + off - step
        )
        if rates is not None:
            closes.update(int(t) - off + step for t in rates["time"])
    return sorted(c for c in closes if start_utc < c <= end_utc)


@dataclass(frozen=True)
class BacktestResult:
    """What one replay did and how fast."""

    bars: int
    decisions: int
    seconds: float
    counts: dict[str, int]
    refusals: dict[str, int]
    balance: float | None
    equity: float | None

    @property
    def bars_per_s(self) -> float:
        """Decided (symbol, bar) pairs per second of wall time."""
        return self.decisions / self.seconds if self.seconds > 0 else float("inf")


def run_backtest(
    engine: Engine, closes: list[int], symbols: list[str], set_time: Callable[[int], None]
) -> BacktestResult:
    """Replay ``closes`` through ``engine`` as fast as it goes (the clock is ``set_time``'s)."""
    n0 = engine.stats.bars
    t0 = time.perf_counter()
    # The world built before the replay (feature tables, precomputed answers, the market)
    # lives as long as the run: frozen out of the collector (no collection first: freezing
    # is a constant-time move), which otherwise traverses it again in every full collection.
    gc.freeze()
    try:
        engine.replay(closes, symbols, set_time)
    finally:
        gc.unfreeze()
    dt = time.perf_counter() - t0
    acct = engine.terminal.account_info()
    return BacktestResult(
        bars=len(closes),
        decisions=engine.stats.bars - n0,
        seconds=dt,
        counts=engine.journal.counts(),
        refusals=engine.journal.reason_counts(),
        balance=float(acct.balance) if acct else None,
        equity=float(acct.equity) if acct else None,
    )
