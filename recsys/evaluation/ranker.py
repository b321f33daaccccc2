"""A small L2-regularised logistic regression (numpy + scipy) for ranking candidates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
from scipy.optimize import minimize

from recsys.evaluation.errors import EvaluationError


@dataclass
class LogisticRanker:
    """Logistic regression on sign(x) * log1p(|x|)-compressed, standardised features.

    The compression suits the heavy-tailed counts and decayed scores the candidate generators emit.
    ``l2`` is the penalty on the weights (not the intercept) relative to the mean log-loss.
    """

    l2: float = 1e-3
    max_iter: int = 500

    def fit(self, features: np.ndarray, labels: np.ndarray) -> Self:
        """features float [n, d]; labels {0, 1} [n] with both classes present."""
        x = self._compress(features)
        y = np.asarray(labels, dtype=np.float64)
        if x.shape[0] != len(y) or len(np.unique(y)) != 2:
            raise EvaluationError("ranker needs one label per row and both classes present")
        self.mean_ = x.mean(axis=0)
        self.scale_ = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        z = np.hstack([(x - self.mean_) / self.scale_, np.ones((len(y), 1))])
        penalty = np.append(np.full(x.shape[1], self.l2), 0.0)

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            logits = z @ w
            # log(1 + e^t) - y t, computed stably
            value = np.mean(np.logaddexp(0.0, logits) - y * logits)
            grad = z.T @ (1.0 / (1.0 + np.exp(-logits)) - y) / len(y)
            return value + 0.5 * penalty @ (w * w), grad + penalty * w

        result = minimize(
            loss,
            np.zeros(z.shape[1]),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter},
        )
        self.weights_ = result.x
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """float [n]: logits (higher = more likely relevant)."""
        if not hasattr(self, "weights_"):
            raise EvaluationError("LogisticRanker must be fitted before score")
        z = (self._compress(features) - self.mean_) / self.scale_
        return z @ self.weights_[:-1] + self.weights_[-1]

    @staticmethod
    def _compress(features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or not np.all(np.isfinite(x)):
            raise EvaluationError("ranker features must be a finite 2-D array")
        return np.sign(x) * np.log1p(np.abs(x))
