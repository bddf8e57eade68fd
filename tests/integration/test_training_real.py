"""The real-export report on one real file: a full table row with CIs and the baselines."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_real_export_report_when_run_on_usdjpy_then_the_row_has_cis_and_baselines(raw_dir: Path, tmp_path: Path) -> None:
    from training.real_exports import evaluate_file, real_exports_report

    out = tmp_path / "real.md"
    text = real_exports_report(raw_dir, out, only=["USDJPY_H1"])
    assert out.read_text() == text
    row = next(ln for ln in text.splitlines() if ln.startswith("| USDJPY | H1 |"))
    assert row.count("[") >= 2  # net return and Sharpe with their CIs

    import yaml

    from training.config import CONFIG_DIR

    spec = yaml.safe_load((CONFIG_DIR / "real_exports_v1.yaml").read_text())
    entry = next(e for e in spec["files"] if e["file"].startswith("USDJPY_H1"))
    r = evaluate_file(entry, raw_dir, spec)
    assert r.test_range[0] >= "2025-03-26" and r.train_rows > 3000 and r.test_rows > 1000
    assert r.model["sharpe_ci_low"] <= r.model["sharpe"] <= r.model["sharpe_ci_high"]
    assert r.baselines["flat"]["net_return"] == 0.0
    assert set(r.baselines) == {"flat", "buy_and_hold", "momentum"}
