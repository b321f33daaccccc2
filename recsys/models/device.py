"""Where models train: a distribution strategy, mixed precision on GPUs, fixed seeds."""

from __future__ import annotations

import tensorflow as tf

import recsys  # noqa: F401  (switches TensorFlow to legacy Keras before it is imported)


def gpus() -> list[tf.config.PhysicalDevice]:
    """The visible CUDA GPUs."""
    return tf.config.list_physical_devices("GPU")


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs with the ``mixed_float16`` policy, else the default strategy.

    The Keras dtype policy is process-global, so this also sets it: ``mixed_float16`` when
    GPUs are found (models keep their losses and outputs in float32), ``float32`` otherwise.
    """
    if gpus():
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
        return tf.distribute.MirroredStrategy()
    tf.keras.mixed_precision.set_global_policy("float32")
    return tf.distribute.get_strategy()


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
