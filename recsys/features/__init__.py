"""Feast only: the feature repository, materialisation and online reads."""
