"""recsys: a feature-store-backed, SQL-native recommender that follows changing interests.

TF-GNN and TF-Recommenders need Keras 2, so the legacy-Keras switch is set here, before any
module of this package can import TensorFlow. Only the model modules import TensorFlow; the SQL,
Feast and CLI code paths stay free of it.

A healthy run prints nothing that looks like an error, so TensorFlow's known-harmless noise is
muted here (without importing TensorFlow):

* its C++ log stops below FATAL unless ``TF_CPP_MIN_LOG_LEVEL`` is set (``0`` shows all). On
  machines without a GPU it logs "failed call to cuInit", on CPUs without AVX-512 "oneDNN
  supports DT_INT64 only on platforms with AVX-512", and TF 2.20's tf.data rewrite for
  deterministic ops logs "NodeDef mentions attribute use_unbounded_threadpool"; all at ERROR
  level, none of them a failure, and TensorFlow has no per-message switch. Real failures still
  reach Python as exceptions.
* TF-GNN's read-only ``_ImmutableMapping`` makes ``tf.nest`` warn "Mapping types may not work
  well with tf.nest"; the mapping is rebuilt correctly, so that one warning is filtered from
  the ``tensorflow`` logger. So are Keras 2's two warnings on saving and reloading the query
  tower as a SavedModel ("compiled metrics have yet to be built", "non-serializable objects ...
  Defaulting to empty config"): the towers are served through their SavedModel signature,
  which needs neither. Nothing else is filtered.
"""

import logging
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"


# Starts of the known-harmless warnings (module doc), each with a text the message must contain.
_HARMLESS = (
    ("Mapping types may not work well with tf.nest", "tensorflow_gnn."),
    ("Compiled the loaded model, but the compiled metrics have yet to be built", ""),
    ("Model's `__init__()` arguments contain non-serializable objects", "Defaulting to empty"),
)


class _HarmlessTensorFlowWarnings(logging.Filter):
    """Drops the warnings of ``_HARMLESS`` (see the module doc), and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(s) and part in message for s, part in _HARMLESS)


# TensorFlow logs through this logger (tf_logging.get_logger), created here or by TF alike.
logging.getLogger("tensorflow").addFilter(_HarmlessTensorFlowWarnings())
