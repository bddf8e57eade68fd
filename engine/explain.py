"""Plain-language explanations of journaled decisions, and the similar past decisions.

Everything here reads the journal only: the engine journals, with each decision, the model's
probabilities, serving's explanation (regime state, each member's probabilities and weight),
the feature vector it scored and, once :mod:`engine.explain_worker` computed them, the
features' TreeSHAP contributions. An explanation is built from **deterministic templates**
over those columns (no language model, the same row always reads the same):

* the decision and its probabilities, the regime state in words;
* each member's vote (its argmax class), probability and weight in the blend;
* the top contributing features with their value and direction (toward / against the class);
* the risk layer's verdict and refusal reason, if any, and the fill(s) of the bar.

**Similar past decisions** are the ``k`` nearest neighbours (scikit-learn ``NearestNeighbors``,
Euclidean on features standardised over the candidates) among decisions of the same symbol
**strictly before** the explained bar — a later decision is never a neighbour, however close —
with their realised outcome:

* ``next_bar_bps``: the next bar's return (the next decision's ``ret_1`` feature, a log return)
  in the decision's direction, in basis points (long +, short −, flat 0);
* ``trade_bps``: for a decision that opened a position, that trade's return from its fills
  (entry to the fill that closed it), in basis points of the entry price.

Both are outcomes as known at the explained bar's close: a neighbour's trade that closed
after it shows no trade outcome (nothing from after the bar leaks into the explanation).

scikit-learn is a platform dependency: the lean engine imports it only when neighbours are
asked for, and answers without them (saying why) where it is not installed.
"""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime
from typing import Any

CLASSES = ("short", "flat", "long")
REGIME_WORDS = {
    0: "calm and ranging",
    1: "calm and trending",
    2: "volatile and ranging",
    3: "volatile and trending",
}
"""State = 2 x (volatility above its threshold) + (|trend| above its threshold), as trained."""


def utc(ts: float | int) -> str:
    """``2026-01-12 08:00 UTC``."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M UTC")


def _side(decision: str | None) -> int:
    return {"long": 1, "short": -1}.get(str(decision or ""), 0)


def _fills(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The bar's executed orders: intent, volume, price, retcode, position ticket."""
    out = []
    for r in (row.get("order_result") or {}).get("results", []) or []:
        attempts = r.get("attempts") or []
        last = attempts[-1] if attempts else {}
        out.append(
            {
                "intent": r.get("intent"),
                "status": r.get("status"),
                "volume": last.get("volume"),
                "price": last.get("price"),
                "retcode": last.get("retcode"),
                "order": last.get("order"),
            }
        )
    return out


def trades(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Round trips from the journal's fills, oldest first: each ``open:buy|sell`` fill closed by
    the later ``close:<ticket>`` fill of its position (the open's order ticket); a trade still
    open has ``exit_price`` None. ``bps`` = side x (exit / entry - 1) x 1e4."""
    open_by_ticket: dict[tuple[str, int], dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for row in sorted(rows, key=lambda r: (int(r["bar_close"]), r["symbol"])):
        for f in _fills(row):
            intent = str(f.get("intent") or "")
            if f.get("status") != "done" or f.get("price") is None:
                continue
            if intent.startswith("open:"):
                t = {
                    "symbol": row["symbol"],
                    "open_bar": int(row["bar_close"]),
                    "side": 1 if intent == "open:buy" else -1,
                    "volume": f.get("volume"),
                    "entry_price": float(f["price"]),
                    "exit_price": None,
                    "close_bar": None,
                    "bps": None,
                    "ticket": f.get("order"),
                    "row": row,
                }
                out.append(t)
                if f.get("order") is not None:
                    open_by_ticket[(row["symbol"], int(f["order"]))] = t
            elif intent.startswith("close:"):
                try:
                    ticket = int(intent.split(":", 1)[1])
                except ValueError:
                    continue
                t2 = open_by_ticket.pop((row["symbol"], ticket), None)
                if t2 is not None:
                    t2["exit_price"] = float(f["price"])
                    t2["close_bar"] = int(row["bar_close"])
                    t2["bps"] = t2["side"] * (t2["exit_price"] / t2["entry_price"] - 1.0) * 1e4
    return out


def outcomes(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, float | None]]:
    """Each decision's realised outcome (see the module docstring)."""
    out: dict[tuple[str, int], dict[str, float | None]] = {}
    by_sym: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_sym.setdefault(r["symbol"], []).append(r)
    for sym, rs in by_sym.items():
        rs.sort(key=lambda r: int(r["bar_close"]))
        for i, r in enumerate(rs):
            nxt = rs[i + 1] if i + 1 < len(rs) else None
            ret = (nxt.get("features") or {}).get("ret_1") if nxt else None
            nb = None
            if ret is not None and math.isfinite(float(ret)):
                nb = _side(r.get("decision")) * float(ret) * 1e4
            out[(sym, int(r["bar_close"]))] = {"next_bar_bps": nb, "trade_bps": None}
    for t in trades(rows):
        key = (t["symbol"], t["open_bar"])
        if key in out:
            out[key]["trade_bps"] = t["bps"]
    return out


def neighbours(
    rows: list[dict[str, Any]], target: dict[str, Any], k: int = 5
) -> list[dict[str, Any]]:
    """The ``k`` decisions most similar to ``target`` by feature vector, among decisions of
    its symbol STRICTLY BEFORE its bar (standardised features, Euclidean), nearest first."""
    feats = target.get("features") or {}
    names = sorted(feats)
    bar = int(target["bar_close"])
    cands = [
        r
        for r in rows
        if r["symbol"] == target["symbol"]
        and int(r["bar_close"]) < bar
        and r.get("features")
        and all(n in r["features"] for n in names)
    ]
    if not names or not cands:
        return []
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    x = np.array([[float(r["features"][n]) for n in names] for r in cands], dtype=float)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[~np.isfinite(sd) | (sd == 0)] = 1.0
    z = (x - mu) / sd
    q = (np.array([[float(feats[n]) for n in names]], dtype=float) - mu) / sd
    nn = NearestNeighbors(n_neighbors=min(k, len(cands))).fit(z)
    dist, idx = nn.kneighbors(q)
    # outcomes as known at the explained bar's close: a trade closed later shows none
    outs = outcomes(
        [r for r in rows if r["symbol"] == target["symbol"] and int(r["bar_close"]) <= bar]
    )
    res = []
    for d, i in zip(dist[0], idx[0], strict=True):
        r = cands[int(i)]
        res.append(
            {
                "symbol": r["symbol"],
                "bar_close": int(r["bar_close"]),
                "decision": r.get("decision"),
                "verdict": r.get("verdict"),
                "distance": float(d),
                **outs.get((r["symbol"], int(r["bar_close"])), {}),
            }
        )
    return res


def warm_up() -> None:
    """Import scikit-learn ahead of the first explanation (seconds on a busy machine); a
    missing scikit-learn is reported when neighbours are asked for."""
    with contextlib.suppress(ImportError):
        import sklearn.neighbors  # noqa: F401


def _vote(probs: list[float]) -> tuple[str, float]:
    if not probs:
        return "?", float("nan")
    k = max(range(len(probs)), key=lambda i: probs[i])
    return (CLASSES[k] if k < len(CLASSES) else str(k)), float(probs[k])


def _contrib(row: dict[str, Any]) -> dict[str, Any] | None:
    c = row.get("contributions")
    return c if isinstance(c, dict) and isinstance(c.get("contributions"), dict) else None


def top_features(row: dict[str, Any], n: int = 5) -> list[dict[str, Any]]:
    """The ``n`` features with the largest absolute contribution, with value and direction."""
    c = _contrib(row)
    if c is None:
        return []
    feats = row.get("features") or {}
    items = sorted(c["contributions"].items(), key=lambda kv: abs(kv[1]), reverse=True)[:n]
    return [
        {
            "feature": name,
            "value": feats.get(name),
            "contribution": float(v),
            "direction": "toward" if v > 0 else "against",
        }
        for name, v in items
    ]


def explain_row(
    row: dict[str, Any], history: list[dict[str, Any]] | None = None, k: int = 5
) -> dict[str, Any]:
    """The explanation of one journaled decision as data plus its text lines (``lines``).
    ``history``: the journal's decisions, for the similar past decisions (none when omitted)."""
    lines: list[str] = []
    sym, bar = row["symbol"], int(row["bar_close"])
    probs = row.get("probabilities") or {}
    ptxt = ", ".join(f"{c} {float(probs[c]):.2f}" for c in CLASSES if c in probs)
    lines.append(
        f"{sym}, bar closing {utc(bar)}: the model said {str(row.get('decision')).upper()}"
        + (f" ({ptxt})" if ptxt else "")
        + (f", model version {row['model_version']}." if row.get("model_version") else ".")
    )
    if probs:
        top_cls = max(probs, key=lambda c: float(probs[c]))
        if top_cls != row.get("decision") and row.get("decision") == "flat":
            lines.append(
                f"The most probable class, {top_cls} ({float(probs[top_cls]):.2f}), is below the "
                "model's confidence threshold: flat."
            )
    exp = row.get("explanation") or {}
    reg = exp.get("regime")
    if reg and reg.get("state") is not None:
        st = int(reg["state"])
        lines.append(f"Regime: state {st} ({REGIME_WORDS.get(st, 'unnamed state')}).")
    else:
        lines.append("Regime: not reported for this decision.")
    members = exp.get("members") or []
    if members:
        parts = []
        for m in members:
            vote, p = _vote(list(m.get("probabilities") or []))
            w = float(m.get("weight", float("nan")))
            parts.append(
                f"{m.get('name')} voted {vote}"
                + (f" (p {p:.2f})" if math.isfinite(p) else "")
                + f" with weight {w:.2f}"
            )
        lines.append("Members: " + "; ".join(parts) + ".")
    else:
        lines.append("Members: not reported for this decision.")
    c = _contrib(row)
    tops = top_features(row)
    if c is not None and tops:
        cls = c.get("class")
        cname = c.get("class_name") or (
            CLASSES[int(cls)] if isinstance(cls, int) and 0 <= cls < len(CLASSES) else cls
        )
        head = f"Top features (TreeSHAP of {c.get('member', 'xgb')}" + (
            f" for {cname})" if cname is not None else ")"
        )
        lines.append(
            head
            + ": "
            + "; ".join(
                (
                    f"{t['feature']} = {float(t['value']):.4g}"
                    if t["value"] is not None
                    else t["feature"]
                )
                + (" pushed toward " if t["contribution"] > 0 else " pushed away from ")
                + f"{cname if cname is not None else 'it'} ({t['contribution']:+.3f})"
                for t in tops
            )
            + "."
        )
    elif isinstance(row.get("contributions"), dict) and row["contributions"].get("error"):
        lines.append(f"Top features: not available ({row['contributions']['error'][:120]}).")
    else:
        lines.append("Top features: not computed yet (the explain worker fills them).")
    verdict = row.get("verdict")
    if verdict == "refused":
        code, why = str(row.get("reason_code")), str(row.get("reason") or "")
        why = why.removeprefix(f"{code}: ")
        lines.append(f"Risk layer: REFUSED, reason {code}" + (f": {why}" if why else "") + ".")
    elif verdict == "error":
        lines.append(f"Risk layer: allowed; the order failed ({row.get('reason_code')}).")
    elif verdict == "hold":
        lines.append("Risk layer: nothing to do (already positioned as the model wants): hold.")
    elif verdict == "abstain":
        why = str(row.get("reason") or "").removeprefix("policy_abstain: ")
        lines.append(f"Decision policy: ABSTAIN (flat on purpose): {why}.")
    else:
        tgt = row.get("target_lots")
        lines.append(
            "Risk layer: allowed; "
            + ("close to flat" if tgt == 0 else f"target {tgt} lots")
            + ", orders sent."
        )
    fills = [f for f in _fills(row) if f.get("price") is not None]
    if fills:
        lines.append(
            "Fill: "
            + "; ".join(
                f"{f['intent']} {f['volume']} lots at {f['price']} (retcode {f['retcode']})"
                for f in fills
            )
            + "."
        )
    else:
        lines.append("Fill: none.")
    similar: list[dict[str, Any]] = []
    similar_note = ""
    if history is not None:
        try:
            similar = neighbours(history, row, k)
        except ImportError:
            similar_note = "scikit-learn is not installed here: no similar decisions"
        if similar:
            lines.append(f"Similar past decisions (nearest {len(similar)} before this bar):")
            for s in similar:
                nb = s.get("next_bar_bps")
                tb = s.get("trade_bps")
                lines.append(
                    f"  {utc(s['bar_close'])} {s['decision']} ({s['verdict']}), distance "
                    f"{s['distance']:.2f}: next bar "
                    + (f"{nb:+.1f} bps" if nb is not None else "n/a")
                    + (f", trade {tb:+.1f} bps" if tb is not None else "")
                )
        else:
            lines.append(
                "Similar past decisions: " + (similar_note or "none before this bar") + "."
            )
    return {
        "symbol": sym,
        "bar_close": bar,
        "decision": row.get("decision"),
        "verdict": verdict,
        "reason_code": row.get("reason_code"),
        "probabilities": probs,
        "regime": reg,
        "members": members,
        "top_features": tops,
        "fills": fills,
        "similar": similar,
        "lines": lines,
        "text": "\n".join(lines),
    }


def parse_bar(text: str) -> int:
    """A bar close as UTC epoch seconds, or ISO ``2026-01-12T08:00`` (UTC when no zone)."""
    t = str(text).strip()
    if t.lstrip("-").isdigit():
        return int(t)
    try:
        d = datetime.fromisoformat(t.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise ValueError(
            f"bar must be epoch seconds or an ISO time like 2026-01-12T08:00, got {t[:40]!r}"
        ) from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return int(d.timestamp())
