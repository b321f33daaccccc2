"""The learned interest model: GNN + two-tower retrieval blended with repeat candidates.

Import ``recsys.learned.model`` (and friends) directly; this package imports nothing heavy so
that the CLI stays free of TensorFlow until a command needs it.
"""
