"""Model code: TF-GNN interest-association model, TFRS two-tower retrieval, top-k index.

TensorFlow is heavy and must stay off the import path of the SQL, Feast and CLI code, so
this package imports nothing eagerly: import the submodules (``recsys.models.gnn``,
``recsys.models.two_tower``, ``recsys.models.index``, ``recsys.models.device``) directly.
Each of them imports ``recsys`` first, which switches TensorFlow to legacy Keras.
"""

from __future__ import annotations


class ModelInputError(ValueError):
    """Input arrays given to a model builder or trainer are inconsistent."""
