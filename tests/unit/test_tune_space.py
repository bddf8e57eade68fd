"""The tuning plan: which member studies a config tunes, and the transformer's search space."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from training.config import ExperimentConfig, TransformerSearchConfig, load_config

pytestmark = pytest.mark.unit


def test_member_trials_when_xgboost_family_then_one_study_as_before_and_ensemble_adds_the_transformer() -> (
    None
):
    from training.tune import member_study, member_trials

    assert member_trials(load_config("trend_v1")) == {"xgboost": 12}
    v2 = load_config("trend_v2")
    assert v2.family == "ensemble"
    assert member_trials(v2) == {
        "xgboost": v2.tune.n_trials,
        "transformer": v2.tune.transformer.n_trials or v2.tune.n_trials,
    }
    assert member_trials(v2, n_trials=3) == {
        "xgboost": 3,
        "transformer": 3,
    }  # `tx models tune --trials` sets both
    off = v2.model_copy(
        update={
            "tune": v2.tune.model_copy(update={"transformer": TransformerSearchConfig(n_trials=0)})
        }
    )
    assert member_trials(off) == {"xgboost": v2.tune.n_trials}
    assert (
        member_study("s", "xgboost") == "s" and member_study("s", "transformer") == "s-transformer"
    )


def test_transformer_search_when_a_d_model_is_not_divisible_by_a_head_count_then_refused() -> None:
    with pytest.raises(ValidationError, match="divisible"):
        TransformerSearchConfig(d_model=[16, 18], n_heads=[1, 2, 4])  # 18 % 4
    with pytest.raises(ValidationError, match="low"):
        TransformerSearchConfig(epochs=(3, 1))
    ExperimentConfig(
        name="x",
        feature_service="trend_v2",
        tune={"transformer": {"d_model": [24, 48], "n_heads": [1, 3]}},
    )  # type: ignore[arg-type]


def test_transformer_space_when_sampled_then_every_trial_is_a_valid_transformer_config() -> None:
    import optuna

    from training.config import TransformerConfig
    from training.tune import transformer_space

    sp = TransformerSearchConfig()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    seen = []

    def obj(trial: optuna.Trial) -> float:
        p = transformer_space(trial, sp)
        cfg = TransformerConfig.model_validate(p)
        seen.append(cfg)
        return float(cfg.d_model) / cfg.n_heads + cfg.dropout

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(obj, n_trials=20)
    assert all(c.d_model % c.n_heads == 0 for c in seen)
    assert all(
        sp.epochs[0] <= c.epochs <= sp.epochs[1] and sp.lr[0] <= c.lr <= sp.lr[1] for c in seen
    )
    assert len({(c.d_model, c.n_heads) for c in seen}) > 1
