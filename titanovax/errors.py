"""Errors a person can act on: one line, ``error: what happened (what to do)``, non-zero exit.

:class:`TxError` is raised by precondition checks (:mod:`titanovax.preflight`) and the shell;
:func:`explain` turns the errors of the libraries underneath (settings validation, Redis,
MLflow, Feast, a missing file) into the same one-line form. The ``tx`` entry point prints
that line and exits; ``tx --debug`` shows the full trace instead.
"""

from __future__ import annotations

from typing import Any


class TxError(Exception):
    """A known failure: ``what`` happened, ``hint`` says what to do next."""

    def __init__(self, what: str, hint: str = "", exit_code: int = 1) -> None:
        super().__init__(what)
        self.what = what
        self.hint = hint
        self.exit_code = exit_code

    def line(self) -> str:
        """``what (hint)`` on one line (a hint already in the message is not repeated)."""
        text = " ".join(self.what.split())
        return f"{text} ({self.hint})" if self.hint else text


class NothingDone(TxError):
    """A command ran and produced nothing (no rows, no days): never a green exit."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(what, hint, exit_code=3)


def _env_name(model: Any, loc: tuple[Any, ...]) -> str:
    field = str(loc[0]) if loc else ""
    info = getattr(model, "model_fields", {}).get(field)
    if info is not None and info.alias:
        return str(info.alias).upper()
    prefix = str(getattr(model, "model_config", {}).get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def _settings_error(exc: Any) -> TxError:
    """The first field error of a settings class, named by its environment variable."""
    title = getattr(exc, "title", "")
    model = None
    for cls in _settings_classes():
        if cls.__name__ == title:
            model = cls
    err = exc.errors()[0]
    name = _env_name(model, tuple(err.get("loc", ()))) if model else str(err.get("loc", ""))
    value = err.get("input")
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    shown = f"{name}={value!r}" if isinstance(value, str) else name
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    hint = "see .env.example for the accepted values"
    if err.get("type") == "bool_parsing":
        hint = "use true or false"
    if "(" in msg and msg.rstrip().endswith(")"):
        head, _, tail = msg.rpartition("(")
        return TxError(f"{shown}: {head.strip()}{more}", tail.rstrip(")"), exit_code=2)
    return TxError(f"{shown}: {msg}{more}", hint, exit_code=2)


def _settings_classes() -> list[type]:
    from engine.config import EngineSettings
    from serving.settings import ServingSettings
    from titanovax.settings import DagSettings, PlatformSettings

    return [PlatformSettings, DagSettings, ServingSettings, EngineSettings]


def explain(exc: BaseException) -> TxError | None:
    """The one-line form of a known error, or ``None`` for an unexpected one."""
    if isinstance(exc, TxError):
        return exc
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        titles = {c.__name__ for c in _settings_classes()}
        if exc.title in titles:
            return _settings_error(exc)
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        return TxError(
            f"{exc.title}: {loc}: {err.get('msg')}", "fix the value and run again", exit_code=2
        )
    from titanovax.settings import RedisUrlUnset

    if isinstance(exc, RedisUrlUnset):
        what, _, hint = str(exc).partition(" (")
        return TxError(what, hint.rstrip(")"), exit_code=2)
    try:
        import redis.exceptions as rex

        if isinstance(exc, rex.ConnectionError | rex.TimeoutError):
            return TxError(
                f"Redis (the online store) is not reachable: {exc}",
                "start it, or point TX_REDIS_URL at a running server",
            )
    except ImportError:  # pragma: no cover - redis is a dependency of every deployable
        pass
    name = type(exc).__name__
    if name == "MlflowException":
        code = getattr(exc, "error_code", "")
        if code == "RESOURCE_DOES_NOT_EXIST":
            return TxError(
                f"MLflow: {str(exc).splitlines()[0]}",
                "list what exists with `tx models history` / `tx models aliases`, or train one "
                "with `tx models train`",
            )
        return TxError(f"MLflow: {str(exc).splitlines()[0]}", "check TX_MLFLOW_TRACKING_URI")
    if name == "AlreadyChampion":
        return TxError(str(exc), "nothing to promote; `tx models aliases` shows them", exit_code=3)
    if name in ("FeatureServiceNotFoundException", "FeatureViewNotFoundException"):
        return TxError(f"Feast: {exc}", "register the definitions with `tx features apply`")
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return TxError(f"no such file: {exc.filename}", "check the path")
    return None


def unexpected(exc: BaseException) -> TxError:
    """The one-line form of an error nobody anticipated (the trace is one flag away)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return TxError(
        f"{type(exc).__name__}: {first}" if first else type(exc).__name__,
        "unexpected; rerun with `tx --debug ...` for the trace",
    )
