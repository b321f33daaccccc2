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
  the ``tensorflow`` logger, and nothing else.
"""

import logging
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"


class _TfGnnMappingWarning(logging.Filter):
    """Drops tf.nest's "Mapping types may not work well" warning about TF-GNN's mappings."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Mapping types may not work well with tf.nest")
            and "tensorflow_gnn." in message
        )


# TensorFlow logs through this logger (tf_logging.get_logger), created here or by TF alike.
logging.getLogger("tensorflow").addFilter(_TfGnnMappingWarning())
