"""Choosing what to serve on a validation window, never on a test day.

Each policy ranks the profiles as of the window's start; the figures are NDCG@20 and Recall@50
over the users with a profile who were active in the window. The learned policy is served only
when it beats the best simple policy (``repeat``, ``blend``) on NDCG@20 by more than chance: the
lower end of a one-sided 90% interval of the paired per-user difference must be above 0.
Otherwise that simple policy is: a learned ranker that merely ties on one validation day is as
likely to lose on the next, and the simple one is cheaper to serve and to explain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.ranking.frames import PAD
from recsys.ranking.metrics import GroundTruth, hits, ndcg_at_k, recall_at_k
from recsys.ranking.sources import Users

K_NDCG, K_RECALL = 20, 50
# One-sided 90% normal quantile: the learned policy's paired NDCG@20 gain must clear it.
Z_GAIN = 1.2816


def recommendation_matrix(ranked: pl.DataFrame, user_ids: np.ndarray, k: int) -> np.ndarray:
    """int64 [len(user_ids), k]: each user's items in rank order, -1 padded."""
    rows = pl.DataFrame(
        {"user_id": np.asarray(user_ids, np.int64), "row": np.arange(len(user_ids))}
    )
    placed = ranked.filter(pl.col("rank") <= k).join(rows, on="user_id")
    out = np.full((len(user_ids), k), PAD, dtype=np.int64)
    out[placed["row"].to_numpy(), placed["rank"].to_numpy() - 1] = placed["item_id"].to_numpy()
    return out


@dataclass(frozen=True)
class Validation:
    """A policy's figures on the validation window: the means recorded with the model, and the
    per-user NDCG@20 (float [n_users], in ``truth.user_ids`` order) that the choice pairs."""

    figures: dict[str, float]
    ndcg: np.ndarray


def validate(ranked: pl.DataFrame, truth: GroundTruth) -> Validation:
    """NDCG@20 and Recall@50 of ``ranked`` (``Ranking.rank`` rows) over ``truth``'s users."""
    recs = recommendation_matrix(ranked, truth.user_ids, max(K_NDCG, K_RECALL))
    hit = hits(recs, truth)
    ndcg = ndcg_at_k(hit, truth.sizes, K_NDCG)
    figures = {
        f"ndcg_at_{K_NDCG}": float(ndcg.mean()),
        f"recall_at_{K_RECALL}": float(recall_at_k(hit, truth.sizes, K_RECALL).mean()),
        "n_users": truth.n_users,
    }
    return Validation(figures, ndcg)


def gain_lower_bound(ndcg: np.ndarray, baseline: np.ndarray) -> float:
    """The lower end of the one-sided 90% interval of the mean paired gain ``ndcg - baseline``
    (normal approximation over users; -inf with fewer than two users)."""
    gain = np.asarray(ndcg, np.float64) - np.asarray(baseline, np.float64)
    if len(gain) < 2:
        return float("-inf")
    return float(gain.mean() - Z_GAIN * gain.std(ddof=1) / np.sqrt(len(gain)))


def choose(validations: Mapping[str, Validation], *, simple: tuple[str, ...]) -> str:
    """The policy to serve: the best learned policy (any name not in ``simple``) when its
    paired NDCG@20 gain over the best simple policy is above 0 beyond chance
    (``gain_lower_bound``), else the best simple one; with no simple policy competing (the
    ablations), the best learned one. Ties go to the policy listed first (the simpler)."""
    names = list(validations)

    def best(candidates: list[str]) -> str:
        return max(candidates, key=lambda n: (validations[n].ndcg.mean(), -names.index(n)))

    learned = [name for name in names if name not in simple]
    if len(learned) == len(names):  # only learned policies compete (ablations)
        return best(learned)
    fallback = best([name for name in names if name in simple])
    if not learned:
        return fallback
    winner = best(learned)
    if gain_lower_bound(validations[winner].ndcg, validations[fallback].ndcg) > 0:
        return winner
    return fallback


def pool_recall(
    candidates: pl.DataFrame, positives: pl.DataFrame, profiles: pl.DataFrame
) -> dict[str, dict[str, float]]:
    """Per source (and "any"): how many of the window's positive (user, item) pairs of users
    with a profile it proposed, all of them and the novel ones (items not in the user's recent
    sequence). ``candidates``: a ``candidate_table`` with every source's presence flag."""
    users = profiles.select("user_id")
    events = Users.of(profiles).events
    seen = (
        pl.DataFrame({"user_id": events.user_id, "item_id": events.item_id})
        .unique()
        .with_columns(seen=pl.lit(True))
    )
    truth = (
        positives.join(users, on="user_id")
        .join(seen, on=["user_id", "item_id"], how="left")
        .with_columns(novel=pl.col("seen").is_null())
        .join(candidates, on=["user_id", "item_id"], how="left")
    )
    flags = [c for c in candidates.columns if c.endswith("_present")]
    truth = truth.with_columns(
        pl.any_horizontal([pl.col(f).fill_null(0.0) > 0 for f in flags]).alias("any_present")
    )
    novel = truth.filter(pl.col("novel"))
    return {
        flag.removesuffix("_present"): {
            "positives": int((truth[flag].fill_null(0.0) > 0).sum()),
            "novel_positives": int((novel[flag].fill_null(0.0) > 0).sum()),
            "of_positives": truth.height,
            "of_novel": novel.height,
        }
        for flag in [*flags, "any_present"]
    }
