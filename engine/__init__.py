"""TitanovaX lean live engine.

Deployed apart from the platform (next to the MT5 terminal), so this package imports nothing
from the other rooms and none of feast, mlflow, torch, airflow or bentoml; it installs from
``engine/requirements.txt`` alone (``tests/unit/test_engine_lean.py``).

Modules: :mod:`engine.loop` (the engine, one for live/paper/backtest), :mod:`engine.risk`
(reason codes, trading state), :mod:`engine.sizing` (lots, stops, edge gate),
:mod:`engine.execution` (MT5 order path, client order ids), :mod:`engine.journal` (SQLite or
PostgreSQL, write-ahead intents), :mod:`engine.serving_client` (serving, ONNX fallback),
:mod:`engine.control` (control API + console), :mod:`engine.metrics` (Prometheus),
:mod:`engine.backtest`, :mod:`engine.app` (wiring from settings), :mod:`engine.config`,
:mod:`engine.features` / :mod:`engine.online_format` (Feast online format), :mod:`engine.mt5`.
"""
