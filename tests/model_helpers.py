"""Shared by the tests that need a trained model: a tiny one, quick on 2 cores."""

from __future__ import annotations

import pytest

from recsys.home import Paths


def train_learned(paths: Paths):
    """Train a tiny interest model on the home with its served policy forced to ``learned``
    (which keeps the ANN source and table); returns ``train_home``'s report."""
    pytest.importorskip("tensorflow")
    from recsys.models import interest
    from recsys.models.gnn import GnnConfig
    from recsys.models.training import train_home
    from recsys.models.two_tower import TwoTowerConfig

    config = interest.InterestConfig(
        gnn=GnnConfig(hidden_dim=8, epochs=1, batch_size=4096, show_progress=False),
        towers=TwoTowerConfig(
            embedding_dim=8, user_hash_bins=1000, epochs=1, batch_size=256, show_progress=False
        ),
        show_progress=False,
        policies=("repeat", "blend", "learned"),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(interest, "choose", lambda figures, **_: "learned")
        return train_home(paths, config=config)
