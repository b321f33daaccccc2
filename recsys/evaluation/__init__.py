"""Offline evaluation independent of TensorFlow: time splits, ranking metrics, baselines, reports.

Import the submodules directly (``recsys.evaluation.split``, ``.metrics``, ``.baselines``,
``.report``, ``.plots``); this package imports nothing heavy on its own.
"""
