"""Check a training cluster: train the two-tower a few steps on synthetic data, report each loss.

Run the same command on every worker with ``TF_CONFIG`` set (see ``recsys.models.device``)::

    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]},
                "task": {"type": "worker", "index": 0}}' \\
        python -m recsys.models.multiworker --out losses-0.json --checkpoint-dir ckpt

Every worker writes ``--out``: ``{"losses": [per-step loss], "steps_per_second": median pace,
"replicas": n, "chief": bool}``.
The losses of a healthy cluster equal those of one process that trains the same global batch
over as many local replicas (``--local-replicas n``, no ``TF_CONFIG``): that is the reference
``tests/test_multiworker.py`` compares against.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import recsys  # noqa: F401  (switches TensorFlow to legacy Keras before it is imported)
from recsys.models.device import distribution_strategy, is_chief
from recsys.models.two_tower import (
    QueryFeatureSpec,
    RetrievalExamples,
    TwoTowerConfig,
    train_two_tower,
)
from recsys.warehouse.schema import BEHAVIORS

SPEC = QueryFeatureSpec(
    n_items=50, n_categories=5, dense_dim=3, item_dense_dim=2, interest_slots=3, sequence_length=4
)


def synthetic_examples(rows: int, seed: int) -> RetrievalExamples:
    """``rows`` random (query, candidate) pairs shaped by ``SPEC`` (no GNN inputs)."""
    rng = np.random.default_rng(seed)
    n, slots, seq = rows, SPEC.interest_slots, SPEC.sequence_length
    items = rng.integers(0, SPEC.n_items, n)
    query = {
        "user_id": rng.integers(0, 10**6, n),
        "dense": rng.normal(size=(n, SPEC.dense_dim)).astype(np.float32),
        "interest_categories": rng.integers(-1, SPEC.n_categories, (n, slots)),
        "interest_scores": rng.uniform(size=(n, slots)).astype(np.float32),
        "seq_items": rng.integers(-1, SPEC.n_items, (n, seq)),
        "seq_behaviors": rng.integers(0, len(BEHAVIORS), (n, seq)),
        "seq_gap_hours": rng.uniform(0, 48, (n, seq)).astype(np.float32),
    }
    candidate = {
        "item_id": items,
        "category_id": items % SPEC.n_categories,
        "item_dense": rng.normal(size=(n, SPEC.item_dense_dim)).astype(np.float32),
    }
    return RetrievalExamples(query, candidate, rng.uniform(0.5, 2.0, n).astype(np.float32))


class StepLosses(tf.keras.callbacks.Callback):
    """Collects the loss Keras reports after each training step (summed over replicas), and
    each step's wall time."""

    def __init__(self):
        super().__init__()
        self.losses: list[float] = []
        self.seconds: list[float] = []
        self._started = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))
        self.seconds.append(time.perf_counter() - self._started)


def local_mirrored(replicas: int) -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over ``replicas`` logical CPUs of this process (before any TF op)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
    )
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the step losses")
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=256, help="training pairs")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--local-replicas", type=int, default=0, help="reference run: replicas in this process"
    )
    args = parser.parse_args(argv)
    # Before anything else: both strategies must exist before the first TF op.
    strategy = (
        local_mirrored(args.local_replicas) if args.local_replicas else distribution_strategy()
    )
    config = TwoTowerConfig(
        embedding_dim=8,
        user_hash_bins=64,
        use_gnn=False,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        show_progress=False,
    )
    steps = StepLosses()
    train_two_tower(
        synthetic_examples(args.rows, args.seed),
        synthetic_examples(args.batch_size, args.seed + 1),
        spec=SPEC,
        config=config,
        checkpoint_dir=args.checkpoint_dir,
        strategy=strategy,
        callbacks=(steps,),
    )
    report = {
        "losses": steps.losses,
        # the first steps trace the graph: the median is the steady pace
        "steps_per_second": 1 / statistics.median(steps.seconds),
        "replicas": strategy.num_replicas_in_sync,
        "chief": is_chief(),
    }
    args.out.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
