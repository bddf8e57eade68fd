"""Serving room: the BentoML service for the ``champion`` ONNX bundle and its import from MLflow.

Modules:

- ``settings``: ``ServingSettings``, the ``TX_*`` environment of the serving deployable
  (token, aliases, reload interval, shadow log).
- ``preprocess``: the bundle manifest (``BundleSpec``, optional ``SequenceSpec``), row →
  matrix checks and probabilities → decisions (no BentoML import).
- ``request``: the ``/v1/predict`` body parsed and validated without pydantic (msgspec), and
  the response bodies.
- ``schemas``: the typed JSON request and response models of the HTTP API (documentation,
  ``GET /v1/schema``, and the reference ``request`` is tested against).
- ``inference``: the onnxruntime session tuned for single-row latency, its check and warm-up.
- ``runtime``: loaded models, their atomic swap, shadow scoring, registry reloads.
- ``api``: the ASGI middleware: bearer-token auth and the ``/v1`` endpoints.
- ``metrics``: the ``tx_serving_*`` Prometheus series on BentoML's ``/metrics``.
- ``importer``: MLflow registry alias → BentoML model store.
- ``service``: the ``@bentoml.service`` class ``TrendService``.
- ``server``: start, wait for and stop a ``bentoml serve`` process.

Importing this package imports nothing heavy and has no side effects.
"""
