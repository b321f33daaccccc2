"""Paired bootstrap intervals over users: one implementation for ``recsys evaluate`` and the
benchmarks.

Users are resampled with replacement ``resamples`` times from a generator seeded with ``seed``.
The resamples depend only on (number of users, resamples, seed), so every series of per-user
values of one user group, whatever the model, is resampled on the *same* users: the difference
of two models' resampled means is the resampled mean of their per-user differences (a paired
bootstrap). Intervals are percentile intervals at ``confidence`` (90% by default).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import polars as pl

RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.90
_CHUNK = 100  # resamples drawn at once: memory stays at _CHUNK x n_users

INTERVAL_SCHEMA = {
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "best_baseline": pl.String,
    "delta_vs_best_baseline": pl.Float64,
    "delta_ci_low": pl.Float64,
    "delta_ci_high": pl.Float64,
}

# (model, group, metric, k) -> float [n_users of the group], users in the group's order.
PerUser = Mapping[tuple[str, str, str, int], np.ndarray]


def resample_counts(
    n_users: int, *, resamples: int = RESAMPLES, seed: int = SEED
) -> Iterator[np.ndarray]:
    """Chunks of float [chunk, n_users]: how often each user is drawn in each resample."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n_users, size=(size, n_users))
        flat = idx + (np.arange(size, dtype=np.int64) * n_users)[:, None]
        counts = np.bincount(flat.ravel(), minlength=size * n_users)
        yield counts.reshape(size, n_users).astype(np.float64)


def bootstrap_means(
    values: np.ndarray, *, resamples: int = RESAMPLES, seed: int = SEED
) -> np.ndarray:
    """Resampled means of per-user ``values``: float [n_users] -> [resamples], or
    [n_users, m] (m series of the same users, resampled together) -> [resamples, m]."""
    values = np.asarray(values, dtype=np.float64)
    flat = values[:, None] if values.ndim == 1 else values
    n = flat.shape[0]
    if n == 0:
        means = np.full((resamples, flat.shape[1]), np.nan)
    else:
        chunks = [c @ flat / n for c in resample_counts(n, resamples=resamples, seed=seed)]
        means = np.concatenate(chunks, axis=0)
    return means[:, 0] if values.ndim == 1 else means


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap ``samples`` (nan, nan when empty/nan)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0 or np.isnan(samples).any():
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(
    values: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user ``values``; (nan, nan) for no
    users."""
    return percentile_interval(bootstrap_means(values, resamples=resamples, seed=seed), confidence)


def paired_delta_interval(
    values: np.ndarray,
    reference: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> tuple[float, float]:
    """Interval of mean(values) - mean(reference) over the same users, resampled together."""
    values, reference = np.asarray(values, np.float64), np.asarray(reference, np.float64)
    if values.shape != reference.shape:
        raise ValueError(f"paired series differ in shape: {values.shape} != {reference.shape}")
    return bootstrap_interval(
        values - reference, resamples=resamples, confidence=confidence, seed=seed
    )


def interval_frame(
    per_user: PerUser,
    *,
    baselines: Sequence[str],
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> pl.DataFrame:
    """One row per key of ``per_user``: model, group, metric, k and the ``INTERVAL_SCHEMA``
    columns. ``ci_low``/``ci_high``: the model's own interval; ``best_baseline``: the model of
    ``baselines`` with the highest mean on that (group, metric, k); ``delta_*``: the model's
    mean minus that baseline's and the paired interval of the difference (null when no
    baseline was scored there)."""
    by_group: dict[str, list[tuple[str, str, str, int]]] = {}
    for key in per_user:
        by_group.setdefault(key[1], []).append(key)
    rows: list[dict[str, object]] = []
    for keys in by_group.values():
        stacked = np.stack([np.asarray(per_user[key], np.float64) for key in keys], axis=1)
        means = stacked.mean(axis=0)
        boot = bootstrap_means(stacked, resamples=resamples, seed=seed)
        column = {key: j for j, key in enumerate(keys)}
        best: dict[tuple[str, int], int] = {}
        for j, (model, _, metric, k) in enumerate(keys):
            if model in baselines:
                current = best.get((metric, k))
                if current is None or means[j] > means[current]:
                    best[(metric, k)] = j
        for key in keys:
            j = column[key]
            low, high = percentile_interval(boot[:, j], confidence)
            row: dict[str, object] = dict(zip(("model", "group", "metric", "k"), key, strict=True))
            row.update(ci_low=low, ci_high=high)
            b = best.get((key[2], key[3]))
            if b is None:
                row.update(
                    best_baseline=None,
                    delta_vs_best_baseline=None,
                    delta_ci_low=None,
                    delta_ci_high=None,
                )
            else:
                d_low, d_high = percentile_interval(boot[:, j] - boot[:, b], confidence)
                row.update(
                    best_baseline=keys[b][0],
                    delta_vs_best_baseline=float(means[j] - means[b]),
                    delta_ci_low=d_low,
                    delta_ci_high=d_high,
                )
            rows.append(row)
    schema = {"model": pl.String, "group": pl.String, "metric": pl.String, "k": pl.Int64}
    return pl.DataFrame(rows, schema={**schema, **INTERVAL_SCHEMA})
