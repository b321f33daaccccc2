"""Grouped numpy operations on candidate rows: the vectorised core of every ranking step.

The same code ranks a batch of users (``recsys score``, ``recsys evaluate``) and the one user of
a request (the service). It is numpy rather than polars because a request makes a few hundred
small operations: polars pays ~0.1 ms for each, numpy a few microseconds
(``benchmarks/serving.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Groups:
    """Rows grouped by equal keys. ``order`` sorts the rows by the keys (first key first),
    ``starts`` [g] are where the groups begin in that order."""

    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, *keys: np.ndarray) -> Groups:
        """Groups of rows with equal values in every one of ``keys`` (equal-length arrays),
        ordered by the keys."""
        n = len(keys[0])
        if n == 0:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64))
        order = np.lexsort(keys[::-1])
        new = np.zeros(n, bool)
        new[0] = True
        for key in keys:
            sorted_key = key[order]
            new[1:] |= sorted_key[1:] != sorted_key[:-1]
        return cls(order, np.flatnonzero(new))

    def __len__(self) -> int:
        return len(self.starts)

    def ids(self) -> np.ndarray:
        """int64 [n rows]: each row's group (0..g-1, in key order)."""
        marks = np.zeros(len(self.order), np.int64)
        marks[self.starts] = 1
        out = np.empty(len(self.order), np.int64)
        out[self.order] = np.cumsum(marks) - 1
        return out

    def first(self, values: np.ndarray) -> np.ndarray:
        """[g]: the value of each group's first row in key order (its key, for a key)."""
        return values[self.order[self.starts]]

    def sum(self, values: np.ndarray) -> np.ndarray:
        return self._reduce(np.add, values)

    def max(self, values: np.ndarray) -> np.ndarray:
        return self._reduce(np.maximum, values)

    def min(self, values: np.ndarray) -> np.ndarray:
        return self._reduce(np.minimum, values)

    def count(self) -> np.ndarray:
        """float64 [g]: rows per group."""
        return np.diff(np.append(self.starts, len(self.order))).astype(np.float64)

    def _reduce(self, ufunc: np.ufunc, values: np.ndarray) -> np.ndarray:
        if not len(self.starts):
            return np.zeros(0, np.asarray(values).dtype)
        return ufunc.reduceat(np.asarray(values)[self.order], self.starts)


def ranked_within(key: np.ndarray, score: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """int64 [n]: each row's rank (0 = best) among the rows of its ``key``, by descending
    ``score``, ties by ascending ``tie``."""
    order, position = _ranked_order(key, score, tie)
    rank = np.empty(len(order), np.int64)
    rank[order] = position
    return rank


def best_within(key: np.ndarray, score: np.ndarray, tie: np.ndarray, n: int) -> np.ndarray:
    """int64 row indices of the ``n`` best rows of each ``key`` (``ranked_within``), in key
    order and best first."""
    order, position = _ranked_order(key, score, tie)
    return order[position < n]


def _ranked_order(key: np.ndarray, score: np.ndarray, tie: np.ndarray):
    """The rows sorted by (key, -score, tie), and each sorted row's position within its key."""
    order = np.lexsort((tie, -score, key))
    sorted_key = key[order]
    new = np.ones(len(order), bool)
    new[1:] = sorted_key[1:] != sorted_key[:-1]
    starts = np.flatnonzero(new)
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.append(starts, len(order))))
    return order, position


def expand(sorted_keys: np.ndarray, wanted: np.ndarray, per_key: int | None = None):
    """A join on a sorted key column: (wanted_index, row) int64 arrays pairing each position of
    ``wanted`` with every row of ``sorted_keys`` equal to it (the first ``per_key`` of them),
    wanted rows in order and each key's rows in table order."""
    wanted = np.asarray(wanted, dtype=sorted_keys.dtype)
    starts = np.searchsorted(sorted_keys, wanted, side="left")
    lengths = np.searchsorted(sorted_keys, wanted, side="right") - starts
    if per_key is not None:
        lengths = np.minimum(lengths, per_key)
    total = int(lengths.sum())
    wanted_index = np.repeat(np.arange(len(wanted)), lengths)
    # positions starts[j] .. starts[j] + lengths[j] - 1 for every wanted j, in one go
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return wanted_index, offsets + np.arange(total)


def match(keys: tuple[np.ndarray, ...], of: tuple[np.ndarray, ...]) -> np.ndarray:
    """int64 [n]: for each row of the ``keys`` columns, the index of the row of the ``of``
    columns equal to it (the last, if several), else -1: a left join on several columns."""
    n = len(keys[0])
    if not n or not len(of[0]):
        return np.full(n, -1, np.int64)
    groups = Groups.of(*(np.concatenate([k, o]) for k, o in zip(keys, of, strict=True)))
    group = groups.ids()
    where = np.full(len(groups), -1, np.int64)
    where[group[n:]] = np.arange(len(of[0]))
    return where[group[:n]]
