"""One model interface for every learner: ``fit(train, valid=None)`` and ``predict_proba(data)``.

Data comes as :class:`ModelData`: tabular features ``x`` float32 ``[N, F]`` (in the manifest's
feature order), optionally the bar sequence ``seq`` float32 ``[N, SEQ_LEN, C]``, and labels
``y`` (0 short, 1 flat, 2 long). Every model refuses to predict before it is fitted
(:class:`NotFittedError`) and exports itself to ONNX (:mod:`training.export`).

* :class:`XGBModel` — XGBoost ``hist`` on the tabular features;
* :class:`TransformerModel` — a small PyTorch transformer encoder over the sequence, its pooled
  state concatenated with the standardised tabular features, then a linear head;
* :class:`RegimeClassifier` — volatility (high/low) × trend (trending/ranging) state from two
  tabular features, thresholds fitted on the training rows (medians);
* :class:`EnsembleModel` — per-regime weights of the members' probabilities, fitted on
  validation rows (the last walk-forward fold), members refitted on all training rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

N_CLASSES = 3


class NotFittedError(RuntimeError):
    """predict_proba was called before fit."""


@dataclass
class ModelData:
    x: np.ndarray
    seq: np.ndarray | None = None
    y: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        if self.seq is not None:
            self.seq = np.ascontiguousarray(self.seq, dtype=np.float32)
            if len(self.seq) != len(self.x):
                raise ValueError("x and seq have different row counts")
        if self.y is not None:
            self.y = np.asarray(self.y, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: np.ndarray) -> ModelData:
        return ModelData(
            self.x[idx],
            None if self.seq is None else self.seq[idx],
            None if self.y is None else self.y[idx],
        )

    def labels(self) -> np.ndarray:
        if self.y is None:
            raise ValueError("these rows have no labels")
        return self.y


class TxModel(Protocol):
    def fit(self, train: ModelData, valid: ModelData | None = None) -> TxModel: ...

    def predict_proba(self, data: ModelData) -> np.ndarray: ...


def _full_proba(p: np.ndarray, classes: np.ndarray) -> np.ndarray:
    out = np.zeros((len(p), N_CLASSES), dtype=p.dtype)
    out[:, classes] = p
    return out


class XGBModel:
    """XGBoost (``hist``) multi-class on the tabular features."""

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = {"tree_method": "hist", **(params or {})}
        self.booster: Any = None

    def fit(self, train: ModelData, valid: ModelData | None = None) -> XGBModel:
        from xgboost import XGBClassifier

        y = train.labels()
        if len(np.unique(y)) < N_CLASSES:
            # XGBoost needs every class: add one zero-weight row per missing class
            missing = [c for c in range(N_CLASSES) if c not in set(y.tolist())]
            x = np.vstack([train.x, np.repeat(train.x[:1], len(missing), axis=0)])
            y = np.concatenate([y, np.array(missing)])
            w = np.concatenate([np.ones(len(train)), np.zeros(len(missing))])
        else:
            x, w = train.x, None
        params = {
            "objective": "multi:softprob",
            "num_class": N_CLASSES,
            "n_jobs": 2,
            "random_state": 7,
            **self.params,
        }
        model = XGBClassifier(**params)
        model.fit(x, y, sample_weight=w)
        self.booster = model
        return self

    def predict_proba(self, data: ModelData) -> np.ndarray:
        if self.booster is None:
            raise NotFittedError("XGBModel.predict_proba before fit")
        return np.asarray(self.booster.predict_proba(data.x), dtype=np.float32)

    def contributions(self, data: ModelData) -> np.ndarray:
        """SHAP values from XGBoost itself (``pred_contribs``): ``[N, classes, F + 1]``."""
        if self.booster is None:
            raise NotFittedError("XGBModel.contributions before fit")
        from xgboost import DMatrix

        c = self.booster.get_booster().predict(DMatrix(data.x), pred_contribs=True)
        return np.asarray(c)

    @property
    def feature_importances_(self) -> np.ndarray:
        if self.booster is None:
            raise NotFittedError("not fitted")
        return np.asarray(self.booster.feature_importances_)


def _torch_module(n_features: int, n_channels: int, seq_len: int, cfg: Any) -> Any:
    import torch
    from torch import nn

    class SeqTabNet(nn.Module):
        """Transformer encoder over the sequence + standardised tabular features → 3 probabilities."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("x_mean", torch.zeros(n_features))
            self.register_buffer("x_std", torch.ones(n_features))
            self.register_buffer("s_mean", torch.zeros(n_channels))
            self.register_buffer("s_std", torch.ones(n_channels))
            self.proj = nn.Linear(n_channels, cfg.d_model)
            self.pos = nn.Parameter(torch.zeros(1, seq_len, cfg.d_model))
            layer = nn.TransformerEncoderLayer(
                cfg.d_model,
                cfg.n_heads,
                dim_feedforward=2 * cfg.d_model,
                dropout=cfg.dropout,
                batch_first=True,
            )
            self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
            self.tab = nn.Sequential(nn.Linear(n_features, cfg.d_model), nn.GELU())
            self.head = nn.Linear(2 * cfg.d_model, N_CLASSES)

        def forward(self, x: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
            xs = (x - self.x_mean) / self.x_std  # type: ignore[operator]
            ss = (seq - self.s_mean) / self.s_std  # type: ignore[operator]
            h = self.encoder(self.proj(ss) + self.pos)
            z = torch.cat([h.mean(dim=1), self.tab(xs)], dim=1)
            return torch.softmax(self.head(z), dim=1)

    return SeqTabNet()


class TransformerModel:
    """A small transformer encoder over the bar sequence plus the tabular features."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.net: Any = None

    def fit(
        self,
        train: ModelData,
        valid: ModelData | None = None,
        *,
        on_epoch: Callable[[int, TransformerModel], None] | None = None,
    ) -> TransformerModel:
        """Train for ``cfg.epochs``; ``on_epoch(epoch, self)`` runs after each epoch with the
        network in eval mode (tuning scores validation rows there; an exception it raises,
        e.g. Optuna's ``TrialPruned``, stops the fit and propagates)."""
        import torch

        if train.seq is None:
            raise ValueError("TransformerModel needs the sequence feature")
        torch.manual_seed(self.cfg.seed)
        rng = np.random.default_rng(self.cfg.seed)
        n, seq_len, c = train.seq.shape
        net = _torch_module(train.x.shape[1], c, seq_len, self.cfg)
        xs = train.x.std(axis=0)
        ss = train.seq.reshape(-1, c).std(axis=0)
        net.x_mean.copy_(torch.from_numpy(train.x.mean(axis=0)))
        net.x_std.copy_(torch.from_numpy(np.where(xs > 1e-12, xs, 1.0).astype(np.float32)))
        net.s_mean.copy_(torch.from_numpy(train.seq.reshape(-1, c).mean(axis=0)))
        net.s_std.copy_(torch.from_numpy(np.where(ss > 1e-12, ss, 1.0).astype(np.float32)))
        y = torch.from_numpy(train.labels())
        counts = np.bincount(train.labels(), minlength=N_CLASSES).astype(np.float32)
        weight = torch.from_numpy(
            np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / N_CLASSES, 0.0).astype(
                np.float32
            )
        )
        opt = torch.optim.AdamW(net.parameters(), lr=self.cfg.lr, weight_decay=1e-4)
        x_t, s_t = torch.from_numpy(train.x), torch.from_numpy(train.seq)
        net.train()
        for epoch in range(self.cfg.epochs):
            order = rng.permutation(n)
            total = 0.0
            for i in range(0, n, self.cfg.batch_size):
                b = torch.from_numpy(order[i : i + self.cfg.batch_size])
                p = net(x_t[b], s_t[b])
                loss = torch.nn.functional.nll_loss(torch.log(p + 1e-8), y[b], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            log.debug("transformer epoch %d loss %.4f", epoch, total / n)
            if on_epoch is not None:
                net.eval()
                self.net = net
                try:
                    on_epoch(epoch, self)
                except BaseException:
                    self.net = None  # a stopped fit leaves no half-trained model behind
                    raise
                net.train()
        net.eval()
        self.net = net
        return self

    def __getstate__(self) -> dict[str, Any]:
        # the torch module class is built lazily (no torch import at module import): pickle its weights
        state: dict[str, Any] = {"cfg": self.cfg, "weights": None, "shape": None}
        if self.net is not None:
            state["weights"] = {
                k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()
            }
            state["shape"] = (
                int(self.net.x_mean.shape[0]),
                int(self.net.s_mean.shape[0]),
                int(self.net.pos.shape[1]),
            )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cfg = state["cfg"]
        self.net = None
        if state["weights"] is not None:
            import torch

            n_features, n_channels, seq_len = state["shape"]
            net = _torch_module(n_features, n_channels, seq_len, self.cfg)
            net.load_state_dict({k: torch.from_numpy(v) for k, v in state["weights"].items()})
            net.eval()
            self.net = net

    def predict_proba(self, data: ModelData) -> np.ndarray:
        if self.net is None:
            raise NotFittedError("TransformerModel.predict_proba before fit")
        if data.seq is None:
            raise ValueError("TransformerModel needs the sequence feature")
        import torch

        with torch.no_grad():
            out = [
                self.net(
                    torch.from_numpy(data.x[i : i + 2048]), torch.from_numpy(data.seq[i : i + 2048])
                )
                for i in range(0, len(data), 2048)
            ]
        return (
            torch.cat(out).numpy().astype(np.float32)
            if out
            else np.zeros((0, N_CLASSES), np.float32)
        )


class RegimeClassifier:
    """State = 2 * [vol feature > its training median] + [|trend feature| > its training median].

    0 calm/ranging, 1 calm/trending, 2 volatile/ranging, 3 volatile/trending."""

    n_states = 4

    def __init__(self, feature_names: list[str], vol_feature: str, trend_feature: str) -> None:
        if vol_feature not in feature_names or trend_feature not in feature_names:
            raise ValueError(
                f"regime features {vol_feature}, {trend_feature} are not among the model's features"
            )
        self.vol_idx = feature_names.index(vol_feature)
        self.trend_idx = feature_names.index(trend_feature)
        self.vol_thr: float | None = None
        self.trend_thr: float | None = None

    def fit(self, train: ModelData, valid: ModelData | None = None) -> RegimeClassifier:
        self.vol_thr = float(np.median(train.x[:, self.vol_idx]))
        self.trend_thr = float(np.median(np.abs(train.x[:, self.trend_idx])))
        return self

    def predict(self, data: ModelData) -> np.ndarray:
        if self.vol_thr is None or self.trend_thr is None:
            raise NotFittedError("RegimeClassifier.predict before fit")
        v = data.x[:, self.vol_idx] > np.float32(self.vol_thr)
        t = np.abs(data.x[:, self.trend_idx]) > np.float32(self.trend_thr)
        return 2 * v.astype(np.int64) + t.astype(np.int64)

    def predict_proba(self, data: ModelData) -> np.ndarray:
        return np.eye(self.n_states, dtype=np.float32)[self.predict(data)]


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1.0))))


def fit_weights(probas: list[np.ndarray], y: np.ndarray, grid: int = 11) -> np.ndarray:
    """Convex weights of two (or one) members' probabilities minimising validation log loss."""
    if len(probas) == 1:
        return np.array([1.0])
    if len(probas) != 2:
        raise ValueError("fit_weights supports one or two members")
    best, best_w = np.inf, 0.5
    for w in np.linspace(0.0, 1.0, grid):
        ll = _log_loss(w * probas[0] + (1 - w) * probas[1], y)
        if ll < best - 1e-12:
            best, best_w = ll, float(w)
    return np.array([best_w, 1 - best_w])


class EnsembleModel:
    """XGBoost + transformer, weighted per regime state; weights fitted on validation rows."""

    min_rows_per_state = 30

    def __init__(
        self, xgb: XGBModel, transformer: TransformerModel, regime: RegimeClassifier
    ) -> None:
        self.xgb = xgb
        self.transformer = transformer
        self.regime = regime
        self.weights: np.ndarray | None = None  # [n_states, 2]

    def fit(self, train: ModelData, valid: ModelData | None = None) -> EnsembleModel:
        """Fit the members on ``train``, the per-state weights on ``valid``, then refit the
        members on train + valid (``valid`` must follow ``train`` in time)."""
        if valid is None or len(valid) == 0:
            raise ValueError("EnsembleModel.fit needs validation rows to fit its weights")
        self.regime.fit(train)
        self.xgb.fit(train)
        self.transformer.fit(train)
        pv = [self.xgb.predict_proba(valid), self.transformer.predict_proba(valid)]
        yv = valid.labels()
        glob = fit_weights(pv, yv)
        states = self.regime.predict(valid)
        w = np.tile(glob, (self.regime.n_states, 1))
        for s in range(self.regime.n_states):
            m = states == s
            if m.sum() >= self.min_rows_per_state:
                w[s] = fit_weights([p[m] for p in pv], yv[m])
        self.weights = w.astype(np.float32)
        both = ModelData(
            np.vstack([train.x, valid.x]),
            None
            if train.seq is None or valid.seq is None
            else np.concatenate([train.seq, valid.seq]),
            np.concatenate([train.labels(), yv]),
        )
        self.regime.fit(both)
        self.xgb.fit(both)
        self.transformer.fit(both)
        return self

    def predict_proba(self, data: ModelData) -> np.ndarray:
        if self.weights is None:
            raise NotFittedError("EnsembleModel.predict_proba before fit")
        w = self.weights[self.regime.predict(data)]
        p = w[:, :1] * self.xgb.predict_proba(data) + w[:, 1:2] * self.transformer.predict_proba(
            data
        )
        return p.astype(np.float32)
