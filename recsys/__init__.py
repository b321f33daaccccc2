"""recsys: a feature-store-backed, SQL-native recommender that follows changing interests.

TF-GNN and TF-Recommenders need Keras 2, so the legacy-Keras switch is set here, before any
module of this package can import TensorFlow. Only the model modules import TensorFlow; the SQL,
Feast and CLI code paths stay free of it.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
