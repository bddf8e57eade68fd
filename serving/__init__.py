"""Serving room: the BentoML service for the ``champion`` ONNX bundle and its import from MLflow.

Modules:

- ``settings``: ``ServingSettings``, the ``TX_*`` environment of the serving deployable
  (token, aliases, reload interval, shadow log).
- ``preprocess``: the bundle manifest (``BundleSpec``, optional ``SequenceSpec``), the
  validation error of a request and probabilities → decisions (no BentoML import).
- ``schemas``: the ``/v1`` request and response, defined once as msgspec Structs (the
  decoder's types, ``GET /v1/schema``, and BentoML's OpenAPI through pydantic hooks).
- ``request``: the ``/v1/predict`` body decoded into those Structs with the bundle's
  features plugged in, every field error reported in one bounded answer; the responses.
- ``inference``: the onnxruntime session tuned for single-row latency, its check and warm-up.
- ``runtime``: loaded models, their atomic swap, shadow scoring, registry reloads.
- ``api``: the ASGI middleware: bearer-token auth and the ``/v1`` endpoints.
- ``metrics``: the ``tx_serving_*`` Prometheus series on BentoML's ``/metrics``.
- ``importer``: MLflow registry alias → BentoML model store.
- ``service``: the ``@bentoml.service`` class ``TrendService`` and its ``predict`` API.
- ``server``: start, wait for and stop a ``bentoml serve`` process.

Importing this package imports nothing heavy and has no side effects.
"""
