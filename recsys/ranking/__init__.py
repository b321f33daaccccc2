"""Candidate sources, the learned ranker and reasons: used by score, evaluate and serve."""
