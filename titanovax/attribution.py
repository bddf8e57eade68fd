"""Performance attribution from the engine's journal (``tx explain report``).

Each closed trade (an ``open:buy|sell`` fill and the later fill that closed its position,
see :func:`engine.explain.trades`) is attributed to:

* the **regime** state serving reported at the decision that opened it;
* the **feature family** that contributed most toward that decision's class (the largest
  positive TreeSHAP contribution summed per family; families are the ``family`` of each
  feature's spec in ``feature_repo/pipeline/transforms.py`` — returns, volatility, momentum,
  macd, ... — and the name's prefix for a feature without a spec); ``not computed`` while the
  explain worker has not filled the contributions;
* the **venue** it was executed at. There is one venue today (the MT5 terminal the engine
  trades through), shown as such; a router would journal its venue per order.

P&L is the trade's return from its fills in **basis points of the entry price** (side x
(exit / entry - 1) x 1e4), comparable across symbols; a trade still open is counted apart.
The table is written as Markdown and the plot as a PNG (matplotlib) under ``reports/``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.explain import REGIME_WORDS, trades

VENUE = "mt5 (single venue)"


def feature_family(name: str) -> str:
    """The family of a feature (its spec's, else its name's prefix)."""
    try:
        from feature_repo.pipeline.transforms import SPECS

        spec = SPECS.get(name)
        if spec is not None:
            return str(spec.family)
    except ImportError:  # pragma: no cover - the platform always has feature_repo
        pass
    return name.split("_", 1)[0]


def top_family(row: dict[str, Any]) -> str:
    """The family with the largest summed contribution toward the row's explained class."""
    c = row.get("contributions")
    if not isinstance(c, dict) or not isinstance(c.get("contributions"), dict):
        return "not computed"
    by: dict[str, float] = {}
    for name, v in c["contributions"].items():
        fam = feature_family(name)
        by[fam] = by.get(fam, 0.0) + float(v)
    return max(by.items(), key=lambda kv: kv[1])[0] if by else "not computed"


def regime_label(row: dict[str, Any]) -> str:
    """``3 volatile and trending`` or ``unknown`` (not reported)."""
    reg = (row.get("explanation") or {}).get("regime")
    if not reg or reg.get("state") is None:
        return "unknown"
    st = int(reg["state"])
    return f"{st} {REGIME_WORDS.get(st, '')}".strip()


def attribute(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Closed trades with their regime, family and venue, and the P&L grouped by each."""
    ts = trades(rows)
    closed = [t for t in ts if t["bps"] is not None]
    for t in closed:
        t["regime"] = regime_label(t["row"])
        t["family"] = top_family(t["row"])
        t["venue"] = VENUE
    groups = {dim: _group(closed, dim) for dim in ("regime", "family", "venue")}
    total = sum(t["bps"] for t in closed)
    return {
        "decisions": len(rows),
        "trades_closed": len(closed),
        "trades_open": len(ts) - len(closed),
        "total_bps": total,
        "groups": groups,
        "trades": [{k: v for k, v in t.items() if k != "row"} for t in closed],
    }


def _group(closed: Iterable[dict[str, Any]], dim: str) -> list[dict[str, Any]]:
    acc: dict[str, list[float]] = {}
    for t in closed:
        acc.setdefault(str(t[dim]), []).append(float(t["bps"]))
    out = [
        {
            dim: k,
            "trades": len(v),
            "pnl_bps": sum(v),
            "mean_bps": sum(v) / len(v),
            "win_rate": sum(1 for x in v if x > 0) / len(v),
        }
        for k, v in acc.items()
    ]
    return sorted(out, key=lambda r: r["pnl_bps"], reverse=True)


def render_markdown(att: dict[str, Any], title: str, png: str | None = None) -> str:
    """The attribution as Markdown tables (one per dimension)."""
    lines = [
        f"# Performance attribution: {title}",
        "",
        f"{att['decisions']} decisions, {att['trades_closed']} closed trades "
        f"({att['trades_open']} still open), total {att['total_bps']:+.1f} bps "
        "(P&L per trade in basis points of its entry price, from the journal's fills).",
        "",
    ]
    for dim, rows in att["groups"].items():
        lines += [
            f"## By {dim}",
            "",
            f"| {dim} | trades | P&L (bps) | mean (bps) | win rate |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r[dim]} | {r['trades']} | {r['pnl_bps']:+.1f} | {r['mean_bps']:+.2f} | "
            f"{100 * r['win_rate']:.0f} % |"
            for r in rows
        ] or ["| (no closed trade) | 0 | | | |"]
        lines.append("")
    if png:
        lines += [f"![attribution]({png})", ""]
    return "\n".join(lines)


def plot(att: dict[str, Any], title: str, out: Path) -> Path:
    """Bar charts of P&L by regime, family and venue as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (dim, rows) in zip(axes, att["groups"].items(), strict=True):
        labels = [str(r[dim]) for r in rows]
        vals = [r["pnl_bps"] for r in rows]
        ax.barh(labels, vals, color=["#2e7d32" if v >= 0 else "#c62828" for v in vals])
        ax.axvline(0, color="#555", lw=0.8)
        ax.set_title(f"P&L by {dim} (bps)")
        ax.invert_yaxis()
    fig.suptitle(f"{title}: {att['trades_closed']} closed trades, {att['total_bps']:+.1f} bps")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def attribution_report(
    rows: list[dict[str, Any]], title: str, out_dir: Path, name: str
) -> tuple[dict[str, Any], Path, Path]:
    """Write ``<out_dir>/<name>.md`` and ``<name>.png``; the attribution and both paths."""
    att = attribute(rows)
    png = plot(att, title, out_dir / f"{name}.png")
    md = out_dir / f"{name}.md"
    md.write_text(render_markdown(att, title, png.name))
    return att, md, png
