"""slippage_model: weekly, fit the quantile slippage model on journaled fills and promote it
through its gate.

Wiring only: ``simulate`` (optional, ``simulate_n`` > 0) journals simulated fills through the
engine's order path (:func:`training.slippage.simulate_fills`); ``fit`` calls
:func:`training.slippage.fit_from_journal` on the journal and returns the registry version,
the gate's verdict and the held-out calibration. XCom carries the journal reference and the
version only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow import sdk
from airflow.sdk import Param
from airflow.timetables.interval import CronDataIntervalTimetable

from titanovax.airflow_tasks import apply_airflow_config, notify_task_failure

DOC_MD = """
### slippage_model

Mondays 03:00 UTC: `tx slippage fit` as a task. Fills come from `journal` (a SQLite path or
a `postgresql://` URL; empty: the engine's journal, `TX_JOURNAL_URL` / `TX_JOURNAL_PATH`).
With `simulate_n` > 0 the run first journals that many simulated fills
(`tx slippage simulate-fills`) into `$TX_HOME/slippage/fills.sqlite` and fits on those.
The model `tx_slippage` is registered every run; `champion` moves only when the held-out
pinball loss beats the fixed formula and every quantile's coverage is within tolerance
(audited in `$TX_HOME/registry/alias_audit.jsonl`). See docs/execution-slippage.md.
"""


@sdk.dag(
    dag_id="slippage_model",
    schedule=CronDataIntervalTimetable("0 3 * * 1", timezone="UTC"),
    start_date=datetime(2026, 1, 5, tzinfo=UTC),
    catchup=False,  # a model of this week's fills; an old week adds nothing
    max_active_runs=1,
    tags=["training", "execution"],
    params={
        "journal": Param("", type="string", description="fills journal; empty: the engine's"),
        "simulate_n": Param(0, type="integer", minimum=0, description="simulated fills first"),
        "seed": Param(0, type="integer"),
    },
    default_args={
        "retries": 1,
        "retry_delay": timedelta(minutes=5),
        "pre_execute": apply_airflow_config,
        "on_failure_callback": notify_task_failure,
    },
    doc_md=DOC_MD,
)
def slippage_model() -> None:
    @sdk.task
    def simulate(params: dict | None = None) -> str:
        import logging

        from titanovax.settings import PlatformSettings
        from titanovax.slippage_cli import default_fills_journal

        p = params or {}
        if int(p.get("simulate_n", 0)) > 0:
            from training.slippage import simulate_fills

            logging.getLogger("engine.mt5.sim").setLevel(logging.WARNING)
            target = str(default_fills_journal(PlatformSettings().home))
            simulate_fills(target, int(p["simulate_n"]), seed=int(p.get("seed", 0)))
            return target
        return str(p.get("journal") or "")  # "": the engine's (a DSN stays out of XCom)

    @sdk.task
    def fit(journal: str) -> dict:
        from engine.config import EngineSettings
        from titanovax.settings import PlatformSettings
        from training.slippage import FitConfig, fit_from_journal, read_fills

        target = journal or EngineSettings().journal_target
        cfg = FitConfig()
        need = -(-cfg.min_holdout // cfg.holdout)  # enough that the held-out share gets a verdict
        have = len(read_fills(target))
        if have < int(need):  # no engine fills yet (a fresh stack): nothing to learn, not a failure
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(f"{have} fills in the journal; the model needs {need:.0f}")
        res = fit_from_journal(PlatformSettings(), target, cfg)
        return {
            "version": res.version,
            "promoted": res.promoted,
            "reason": res.decision["reason"],
            "n_test": res.evaluation["n_test"],
            "coverage": {f"q{r['q']:g}": r["coverage"] for r in res.evaluation["quantiles"]},
        }

    fit(simulate())


dag = slippage_model()

if __name__ == "__main__":
    dag.test()
