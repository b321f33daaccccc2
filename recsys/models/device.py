"""Where models train: a distribution strategy, mixed precision on GPUs, fixed seeds.

Multi-worker training follows TensorFlow's convention: every worker runs the same program with
``TF_CONFIG`` set to the cluster (``{"cluster": {"worker": ["host:port", ...]}, "task":
{"type": "worker", "index": i}}``, optionally with one ``chief``), and
``distribution_strategy()`` then returns one ``MultiWorkerMirroredStrategy`` per process. The
chief (``is_chief``) alone writes artefacts.
"""

from __future__ import annotations

import functools
import json
import os

import tensorflow as tf

import recsys  # noqa: F401  (switches TensorFlow to legacy Keras before it is imported)

TF_CONFIG = "TF_CONFIG"


def gpus() -> list[tf.config.PhysicalDevice]:
    """The visible CUDA GPUs."""
    return tf.config.list_physical_devices("GPU")


def _tf_config() -> dict:
    return json.loads(os.environ.get(TF_CONFIG) or "{}")


def cluster_workers() -> int:
    """Processes that train together according to ``TF_CONFIG`` (chief plus workers); 1 without it.

    Parameter servers and evaluators are not counted: they run no training replica.
    """
    cluster = _tf_config().get("cluster", {})
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def is_chief() -> bool:
    """Whether this process writes artefacts: the ``chief`` task, else worker 0, else (no
    ``TF_CONFIG`` task) the only process."""
    config = _tf_config()
    task = config.get("task", {})
    kind, index = task.get("type"), task.get("index", 0)
    if kind is None or kind == "chief":
        return True
    return kind == "worker" and index == 0 and not config.get("cluster", {}).get("chief")


@functools.cache
def _multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    # TensorFlow configures collectives when the eager context starts, so this must run before
    # any other TF op of the process; caching makes later calls return the same strategy.
    return tf.distribute.MultiWorkerMirroredStrategy()


def distribution_strategy() -> tf.distribute.Strategy:
    """``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names more than one worker, else
    MirroredStrategy over all GPUs, else the default strategy.

    Under ``TF_CONFIG`` the first call must come before any other TF op in the process (the
    entry point calls it first); later calls return the same strategy. The Keras dtype policy
    is process-global, so this also sets it: ``mixed_float16`` when GPUs are found (models keep
    their losses and outputs in float32), ``float32`` otherwise.
    """
    strategy = _multi_worker_strategy() if cluster_workers() > 1 else None
    if gpus():
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
        return strategy or tf.distribute.MirroredStrategy()
    tf.keras.mixed_precision.set_global_policy("float32")
    return strategy or tf.distribute.get_strategy()


def compute_dtype() -> tf.DType:
    """The dtype layers compute in under the current global policy (float16 or float32)."""
    return tf.as_dtype(tf.keras.mixed_precision.global_policy().compute_dtype)


def set_seeds(seed: int, *, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; optionally ask TF for deterministic kernels.

    Deterministic kernels cost little on CPU and make reruns bit-identical; on GPUs some
    scatter kernels get slower, so callers training at scale may pass ``False``.
    """
    tf.keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
