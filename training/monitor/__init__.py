"""The monitoring loop's checks: plain functions, each tested without Airflow.

Every check returns :class:`~training.monitor.result.CheckResult` rows; the ``monitoring``
DAG and ``tx monitor run`` call them, log them to MLflow, export them to Prometheus and
store them for operators to query, and the actions read their ``status``.
"""
