"""A seeded, vectorised simulator of e-commerce behaviour logs with planted interest migrations.

It is the project's built-in dataset. The generative story, per user:

1. The catalogue: ``categories`` of Zipf-like size; inside each, items of Zipf-like popularity.
   Every item belongs to exactly one category.
2. Each user has an activity level (log-normal sessions per day) and 2-6 latent interest slots,
   each a category with a logit that drifts linearly in time (gradual drift).
3. Sessions start at a random day and an hour drawn from a daily rhythm (quiet nights, busy
   evenings); each holds a geometric number of views a few tens of seconds apart.
4. A few users *jump*: at the start of one of their sessions a category the user never touched
   becomes their dominant interest (``post_migration_share`` of the latent mass from then on, and
   every fresh view of the first 24 hours). Jumps are only planted where a detector working on
   daily 00:00 snapshots can see them: after ``WARMUP_DAYS`` and ``MIN_VIEWS_BEFORE`` views, at
   least a day before the horizon ends, with ``MIN_VIEWS_AFTER`` views before the next 00:00 that
   outweigh (``JUMP_DOMINANCE``) the user's older short-half-life interest, and at least
   ``MIN_DAYS_BETWEEN_JUMPS`` apart. They are the ground truth in ``Simulation.migrations``.
   Where a jump goes has structure: a planted category association graph (``Simulation.
   associations``) gives every category ``associations_per_category`` popular-weighted "next"
   categories with weights (phone -> case, charger). With ``association_probability`` a jump
   goes to a fresh neighbour of the category it leaves (the user's top category as a detector
   sees it, ``from_category_id``); otherwise, or when every neighbour is already known to the
   user, it goes to a fresh popular-weighted category as without the graph.
5. Each view's category: the session's category, another draw from the user's interests, or a
   rare exploration of another category: with ``association_probability`` a neighbour of the
   session's category in the graph, else a popular-weighted random one. Its item: a Zipf draw
   in that category, or a revisit of one of the user's recent items (repeat consumption).
6. Views spawn cart, fav and buy events on the same item seconds to minutes later, so that the
   behaviour mix is about Taobao's view 90 / cart 5 / fav 3 / buy 2 %.

Everything is numpy over whole arrays (no per-event or per-user Python loops), so ten million
events take seconds, and a seed fixes the output exactly. The graph and every association draw
come from their own random stream, so ``association_probability=0`` (or
``associations_per_category=0``) gives exactly the log of the simulator before the graph.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from recsys.config import FeatureConfig
from recsys.warehouse.schema import BEHAVIORS

SECONDS_PER_DAY = 86_400
MICROS = 1_000_000
MAX_DAYS = 1000  # 2^(days / short half-life) weights stay finite in float64

# Relative activity per hour of day: quiet nights (01-06), a lunch bump and an evening peak, as in
# Taobao's log read in local time.
HOUR_PROFILE = np.array(
    [2.0, 1.2, 0.7, 0.5, 0.4, 0.5, 0.9, 1.8, 2.8, 3.5, 3.8, 4.0]
    + [4.2, 3.9, 3.8, 3.8, 3.8, 3.9, 4.3, 5.0, 5.8, 6.2, 5.4, 3.6]
)
CATEGORY_ZIPF = 1.1  # category size ~ rank^-1.1: the top 10% of categories hold most items
ACTIVITY_SIGMA = 0.8  # log-normal spread of users' session rates (heavy users exist)
MIN_SLOTS, MAX_SLOTS = 2, 6  # latent interest categories per user
DRIFT_PER_DAY = 0.08  # sd of the slots' logit slopes: over a month dominant interests swap
VIEW_GAP_SECONDS = 45.0  # mean gap between views of a session (well under the 30 min session gap)
P_STAY = 0.70  # a view stays in the session's category ...
P_ALT = 0.22  # ... or redraws from the user's interests; else it explores a random category
REPEAT_LAG_P = 0.35  # a revisit goes back a geometric number of the user's views (mean ~3)
WARMUP_DAYS = 3.0
MIN_VIEWS_BEFORE = 20
MIN_VIEWS_AFTER = 5
JUMP_DOMINANCE = 1.5  # by the next 00:00 the new category holds >= 1.5x the older short-term mass
MIN_DAYS_BETWEEN_JUMPS = 5.0
MAX_JUMPS_PER_USER = 3
HONEYMOON_SECONDS = SECONDS_PER_DAY
# Funnel: per view, P(cart), P(fav), P(buy | cart) and P(buy | no cart) giving 90/5/3/2 %.
P_CART = 5 / 90
P_FAV = 3 / 90
P_BUY_AFTER_CART = 0.3
P_BUY_DIRECT = (2 / 90 - P_CART * P_BUY_AFTER_CART) / (1 - P_CART)
FOLLOW_UP_SECONDS = {"cart": 30.0, "fav": 30.0, "buy": 60.0}  # mean delay after the parent event
VIEW, CART, FAV, BUY = (BEHAVIORS.index(b) for b in ("view", "cart", "fav", "buy"))
ASSOCIATIONS_FILE = "category_associations.parquet"
ASSOCIATION_STREAM = 0xA550C  # spawn key of the association graph's own random stream


class SimulationConfigError(ValueError):
    """A simulation parameter is out of range."""


@dataclass(frozen=True)
class SimulationConfig:
    """Size, horizon and behaviour knobs of one simulation; ``seed`` fixes the output.

    Expected events ~= users * days * sessions_per_day * session_views / 0.9.
    """

    users: int
    items: int
    days: int
    seed: int = 0
    categories: int | None = None  # default: one per ~200 items, at least 1
    start: datetime = datetime(2026, 1, 1)
    sessions_per_day: float = 1.0  # mean over users
    session_views: float = 5.0  # mean views per session
    migrations_per_user_day: float = 0.01  # rate of wanted jumps; only observable ones are kept
    post_migration_share: float = 0.8  # latent share of the new category after a jump
    repeat_probability: float = 0.15  # chance that a view revisits one of the user's recent items
    # The planted category association graph: each category's "next" categories. A jump (and an
    # exploring view) follows it with association_probability; 0 gives the graph-free simulator.
    association_probability: float = 0.8
    associations_per_category: int = 3

    def __post_init__(self) -> None:
        for name in ("users", "items", "days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SimulationConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.days > MAX_DAYS:
            raise SimulationConfigError(f"days must be at most {MAX_DAYS}, got {self.days}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SimulationConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.categories is not None and not (
            isinstance(self.categories, int) and 1 <= self.categories <= self.items
        ):
            raise SimulationConfigError(
                f"categories must be an integer in 1..items ({self.items}), got {self.categories!r}"
            )
        if self.start.tzinfo is not None:
            raise SimulationConfigError("start must be a naive datetime in UTC")
        if not self.sessions_per_day > 0:
            raise SimulationConfigError(
                f"sessions_per_day must be positive, got {self.sessions_per_day!r}"
            )
        if not self.session_views >= 1:
            raise SimulationConfigError(f"session_views must be >= 1, got {self.session_views!r}")
        if not self.migrations_per_user_day >= 0:
            raise SimulationConfigError(
                f"migrations_per_user_day must be >= 0, got {self.migrations_per_user_day!r}"
            )
        if not 0 < self.post_migration_share < 1:
            raise SimulationConfigError(
                f"post_migration_share must be in (0, 1), got {self.post_migration_share!r}"
            )
        if not 0 <= self.repeat_probability < 1:
            raise SimulationConfigError(
                f"repeat_probability must be in [0, 1), got {self.repeat_probability!r}"
            )
        if isinstance(self.association_probability, bool) or not (
            0 <= self.association_probability <= 1
        ):
            raise SimulationConfigError(
                f"association_probability must be in [0, 1], got {self.association_probability!r}"
            )
        k = self.associations_per_category
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise SimulationConfigError(
                f"associations_per_category must be a non-negative integer, got {k!r}"
            )

    @property
    def n_categories(self) -> int:
        return self.categories or max(1, round(self.items / 200))

    @property
    def follows_associations(self) -> bool:
        """Whether jumps and explorations can follow the association graph (else the log is the
        graph-free simulator's)."""
        return (
            self.association_probability > 0
            and self.associations_per_category > 0
            and self.n_categories > 1
        )

    @property
    def name(self) -> str:
        """Folder name of this simulation under a home's ``simulations/``; the association knobs
        appear only when the graph is followed (graph-free logs keep their old names)."""
        name = f"sim-u{self.users}-i{self.items}-d{self.days}-s{self.seed}"
        if self.follows_associations:
            name += f"-a{self.association_probability:g}x{self.associations_per_category}"
        return name


@dataclass(frozen=True)
class Simulation:
    """A simulated log and its ground truth.

    ``events``: user_id, item_id, category_id (Int64), behavior (Utf8), event_time (Datetime us,
    UTC-naive, within [start, start + days)), session_id (Utf8), sorted by (user_id, event_time).
    ``migrations``: user_id, from_category_id, to_category_id (Int64), migrated_at (Datetime us):
    one row per planted jump; ``to_category_id`` has no event of the user before ``migrated_at``
    and gets every fresh view of the user's next 24 hours; ``from_category_id`` is the user's top
    category by long-half-life, behaviour-weighted decayed interest just before it; ``associated``
    (Boolean) is true where ``to_category_id`` was drawn from the association graph's
    neighbours of ``from_category_id``.
    ``associations``: src_category_id, dst_category_id (Int64), weight (Float64): the planted
    category association graph, ``associations_per_category`` rows per source category (fewer
    with fewer categories), weights summing to 1 per source, sorted by (src, weight descending).
    """

    events: pl.DataFrame
    migrations: pl.DataFrame
    associations: pl.DataFrame = field(default_factory=lambda: _associations_frame(None, None))


@dataclass(frozen=True)
class _Catalog:
    """Items sorted by category: category c holds sorted items start[c] .. start[c] + size[c] - 1,
    most popular first."""

    item_category: np.ndarray  # (M,) category index of each sorted item
    category_p: np.ndarray  # (C,) category popularity (share of items), sums to 1
    category_start: np.ndarray  # (C,)
    category_size: np.ndarray  # (C,)

    def sample_items(self, rng: np.random.Generator, category: np.ndarray) -> np.ndarray:
        """One popular-weighted item (sorted index) per entry of ``category``, shape (n,) -> (n,).

        The rank is floor((size + 1)^u) - 1 for uniform u: P(rank k) = log((k + 2) / (k + 1)) /
        log(size + 1) ~ 1 / (k + 1.5), a Zipf law of exponent 1 drawn in O(1).
        """
        return self.items_at(category, rng.random(category.size))

    def items_at(self, category: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``sample_items`` with its uniforms ``u`` (n,) drawn beforehand."""
        size = self.category_size[category]
        rank = np.floor(np.exp(u * np.log1p(size))).astype(np.int64) - 1
        return self.category_start[category] + np.clip(rank, 0, size - 1)


def _build_catalog(rng: np.random.Generator, n_items: int, n_categories: int) -> _Catalog:
    weights = np.arange(1, n_categories + 1, dtype=np.float64) ** -CATEGORY_ZIPF
    category_p = weights / weights.sum()
    size = 1 + rng.multinomial(n_items - n_categories, category_p)
    start = np.cumsum(size) - size
    return _Catalog(np.repeat(np.arange(n_categories), size), category_p, start, size)


@dataclass(frozen=True)
class _Graph:
    """The planted association graph over category indices: row c lists c's K neighbours,
    strongest first (K = min(associations_per_category, categories - 1), maybe 0)."""

    dst: np.ndarray  # (C, K) neighbour category indices, never c itself
    weight: np.ndarray  # (C, K) weights, each row sums to 1, descending
    cum: np.ndarray  # (C, K) running sums of ``weight`` (the last column is 1)

    def pick(self, source: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One weighted neighbour of each ``source`` (n,) for uniforms ``u`` (n,); needs K > 0."""
        index = (self.cum[source] < u[:, None]).sum(axis=1)
        return self.dst[source, np.minimum(index, self.dst.shape[1] - 1)]


def _build_graph(rng: np.random.Generator, catalog: _Catalog, per_category: int) -> _Graph:
    """K distinct popular-weighted neighbours per category (sampling without replacement by
    exponential races: the K smallest Exp(1) / p win), with flat-Dirichlet weights, the largest
    to the first drawn."""
    n = catalog.category_p.size
    k = min(per_category, n - 1)
    dst = np.empty((n, max(k, 0)), dtype=np.int64)
    if k > 0:
        inverse_p = (1 / catalog.category_p).astype(np.float32)
        chunk = max(1, (1 << 22) // n)  # rows per block: a few million race entries at a time
        for lo in range(0, n, chunk):
            rows = np.arange(lo, min(n, lo + chunk))
            race = rng.standard_exponential((rows.size, n), dtype=np.float32) * inverse_p
            race[np.arange(rows.size), rows] = np.inf  # no self-association
            top = np.argpartition(race, k - 1, axis=1)[:, :k]
            order = np.argsort(np.take_along_axis(race, top, axis=1), axis=1, kind="stable")
            dst[rows] = np.take_along_axis(top, order, axis=1)
    gamma = rng.standard_gamma(1.0, size=dst.shape)
    weight = -np.sort(-gamma, axis=1) / np.maximum(gamma.sum(axis=1, keepdims=True), 1e-300)
    cum = np.cumsum(weight, axis=1)
    if k > 0:
        cum[:, -1] = 1.0
    return _Graph(dst, weight, cum)


@dataclass(frozen=True)
class _Users:
    """Latent per-user state; slot arrays are (N, MAX_SLOTS), unused slots have logit -inf."""

    sessions_per_day: np.ndarray  # (N,)
    slot_category: np.ndarray  # (N, MAX_SLOTS)
    slot_logit: np.ndarray  # (N, MAX_SLOTS) at day 0
    slot_slope: np.ndarray  # (N, MAX_SLOTS) logit change per day (drift)
    n_slots: np.ndarray  # (N,) slots in use, the first ones


def _build_users(rng: np.random.Generator, config: SimulationConfig, catalog: _Catalog) -> _Users:
    n = config.users
    rate = config.sessions_per_day * np.exp(
        ACTIVITY_SIGMA * rng.standard_normal(n) - ACTIVITY_SIGMA**2 / 2
    )
    slot_category = rng.choice(catalog.category_p.size, size=(n, MAX_SLOTS), p=catalog.category_p)
    slot_logit = rng.standard_normal((n, MAX_SLOTS))
    n_slots = rng.integers(MIN_SLOTS, MAX_SLOTS + 1, size=n)
    slot_logit[np.arange(MAX_SLOTS) >= n_slots[:, None]] = -np.inf
    slot_slope = DRIFT_PER_DAY * rng.standard_normal((n, MAX_SLOTS))
    return _Users(rate, slot_category, slot_logit, slot_slope, n_slots)


@dataclass(frozen=True)
class _Sessions:
    """Sessions sorted by (user, start); views are numbered session by session."""

    user: np.ndarray  # (S,)
    start_s: np.ndarray  # (S,) seconds since config.start
    first_view: np.ndarray  # (S + 1,) view index where each session starts, then the total
    first_of_user: np.ndarray  # (N + 1,) session index where each user starts, then S


def _build_sessions(rng: np.random.Generator, config: SimulationConfig, users: _Users) -> _Sessions:
    per_user = rng.poisson(users.sessions_per_day * config.days)
    user = np.repeat(np.arange(config.users), per_user)
    hour = rng.choice(24, size=user.size, p=HOUR_PROFILE / HOUR_PROFILE.sum())
    start_s = (
        rng.integers(0, config.days, size=user.size) * SECONDS_PER_DAY
        + hour * 3600
        + rng.integers(0, 3600, size=user.size)
    )
    span = (config.days + 2) * SECONDS_PER_DAY
    order = np.argsort(user * span + start_s, kind="stable")
    start_s = start_s[order]
    views = rng.geometric(1 / config.session_views, size=user.size)
    first_view = np.concatenate(([0], np.cumsum(views)))
    first_of_user = np.concatenate(([0], np.cumsum(per_user)))
    return _Sessions(user, start_s, first_view, first_of_user)


@dataclass(frozen=True)
class _Views:
    """Views in (user, session start, position in session) order; arrays of shape (V,)."""

    session: np.ndarray
    user: np.ndarray
    ordinal: np.ndarray  # rank among the user's views
    time_us: np.ndarray  # microseconds since config.start


def _build_views(rng: np.random.Generator, sessions: _Sessions) -> _Views:
    per_session = np.diff(sessions.first_view)
    session = np.repeat(np.arange(per_session.size), per_session)
    gap_us = ((1.0 + rng.exponential(VIEW_GAP_SECONDS, size=session.size)) * MICROS).astype(
        np.int64
    )
    gap_us[sessions.first_view[:-1]] = 0
    offset = np.cumsum(gap_us)
    offset -= np.repeat(offset[sessions.first_view[:-1]], per_session)
    first_of_user = sessions.first_view[sessions.first_of_user]
    return _Views(
        session=session,
        user=np.repeat(sessions.user, per_session),
        ordinal=np.arange(session.size) - np.repeat(first_of_user[:-1], np.diff(first_of_user)),
        time_us=np.repeat(sessions.start_s * MICROS, per_session) + offset,
    )


@dataclass(frozen=True)
class _Jumps:
    """Planted migrations; (N, MAX_JUMPS_PER_USER) arrays filled left to right."""

    time_s: np.ndarray  # seconds since config.start; a huge sentinel where unused
    category: np.ndarray  # category index; -1 where unused
    # Per jump index j: (users, (n, 32) popular-weighted draws) the random destination is the
    # first fresh one of; kept to redo that choice after earlier jumps followed the graph.
    draws: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


NO_JUMP = np.iinfo(np.int64).max // 2


def _decayed_views(sessions: _Sessions) -> tuple[np.ndarray, np.ndarray]:
    """Per session (S,): its views weighted 2^(start / short half-life), and the running sum of
    those weights over the user's sessions so far. A difference of running sums times
    2^(-T / half-life) is the short-term interest mass those sessions hold at time T."""
    half_life_s = FeatureConfig().short_half_life_hours * 3600
    weight = np.diff(sessions.first_view) * np.exp2(sessions.start_s / half_life_s)
    # Per-user sums (not one global cumsum): users' magnitudes differ by 2^days.
    through = pl.DataFrame({"user": sessions.user, "weight": weight}).select(
        pl.col("weight").cum_sum().over("user")
    )
    return weight, through.to_series().to_numpy()


def _eligible_jump_sessions(
    config: SimulationConfig, sessions: _Sessions, views: _Views
) -> np.ndarray:
    """Sessions where a jump would be observable (bool, shape (S,))."""
    user, start = sessions.user, sessions.start_s
    span = (config.days + 2) * SECONDS_PER_DAY
    key = user * span + start
    views_so_far = sessions.first_view[:-1]
    views_before = views_so_far - views_so_far[sessions.first_of_user[user]]
    # Detectors look at 00:00 snapshots (the feature contract), so by the next one the jump's views
    # must be there and outweigh the user's older views under the short half-life.
    midnight = (start // SECONDS_PER_DAY + 1) * SECONDS_PER_DAY
    up_to_midnight = np.searchsorted(key, user * span + midnight) - 1
    views_to_midnight = sessions.first_view[up_to_midnight + 1] - views_so_far
    weight, through = _decayed_views(sessions)
    before = through - weight
    # Every earlier session of the user must be over (plus a session gap and the funnel's
    # follow-ups) before the jump, so that nothing old lands after migrated_at.
    end_s = views.time_us[sessions.first_view[1:] - 1] // MICROS + 30 * 60
    latest_end = np.maximum.accumulate(user * span + end_s) - user * span
    previous_end = np.concatenate(([-1], latest_end[:-1]))
    previous_end[np.flatnonzero(np.diff(user, prepend=-1))] = -1
    return (
        (start >= WARMUP_DAYS * SECONDS_PER_DAY)
        & (start + SECONDS_PER_DAY <= config.days * SECONDS_PER_DAY)
        & (views_before >= MIN_VIEWS_BEFORE)
        & (views_to_midnight >= MIN_VIEWS_AFTER)
        & (through[up_to_midnight] - before >= JUMP_DOMINANCE * before)
        & (previous_end < start)
    )


def _plan_jumps(
    rng: np.random.Generator,
    config: SimulationConfig,
    users: _Users,
    catalog: _Catalog,
    sessions: _Sessions,
    views: _Views,
) -> _Jumps:
    """Pick each jumping user's jump sessions and new categories, one jump index at a time."""
    n = config.users
    time_s = np.full((n, MAX_JUMPS_PER_USER), NO_JUMP, dtype=np.int64)
    category = np.full((n, MAX_JUMPS_PER_USER), -1, dtype=np.int64)
    wanted = np.minimum(
        rng.poisson(config.migrations_per_user_day * config.days, size=n), MAX_JUMPS_PER_USER
    )
    eligible = _eligible_jump_sessions(config, sessions, views)
    last_jump = np.full(n, -NO_JUMP, dtype=np.int64)
    planted = np.zeros(n, dtype=np.int64)  # columns stay filled left to right
    known = users.slot_category
    kept = []
    for j in range(MAX_JUMPS_PER_USER):
        user = sessions.user
        candidate = np.flatnonzero(
            eligible
            & (wanted[user] > j)
            & (planted[user] == j)
            & (sessions.start_s >= last_jump[user] + MIN_DAYS_BETWEEN_JUMPS * SECONDS_PER_DAY)
        )
        if candidate.size == 0:
            break
        # One random candidate session per user: the last after sorting by (user, random key).
        order = np.lexsort((rng.random(candidate.size), user[candidate]))
        picked = candidate[order]
        is_last = np.append(user[picked][1:] != user[picked][:-1], True)
        picked = picked[is_last]
        who = user[picked]
        # The new category: the first popular-weighted draw the user has no interest in yet.
        draws = rng.choice(catalog.category_p.size, size=(who.size, 32), p=catalog.category_p)
        fresh = (draws[:, :, None] != known[who][:, None, :]).all(axis=2)
        ok = fresh.any(axis=1)
        who, picked = who[ok], picked[ok]
        new = draws[ok, fresh[ok].argmax(axis=1)]
        kept.append((who, draws[ok]))
        time_s[who, j] = sessions.start_s[picked]
        category[who, j] = new
        last_jump[who] = sessions.start_s[picked]
        planted[who] += 1
        known = np.concatenate((known, category[:, j : j + 1]), axis=1)
    return _Jumps(time_s, category, tuple(kept))


def _session_interests(
    config: SimulationConfig, users: _Users, jumps: _Jumps, sessions: _Sessions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per session: epoch (jumps so far, (S,)), honeymoon flag (S,), and the cumulative
    probabilities over the user's slots, shape (S, MAX_SLOTS + MAX_JUMPS_PER_USER)."""
    user, start = sessions.user, sessions.start_s
    jump_time = jumps.time_s[user]
    epoch = (jump_time <= start[:, None]).sum(axis=1)
    latest = np.take_along_axis(jump_time, np.maximum(epoch - 1, 0)[:, None], axis=1)[:, 0]
    honeymoon = (epoch > 0) & (start < latest + HONEYMOON_SECONDS)
    logit = users.slot_logit[user] + users.slot_slope[user] * (start / SECONDS_PER_DAY)[:, None]
    weight = np.exp(logit - logit.max(axis=1, keepdims=True))
    total = weight.sum(axis=1)
    # Each jump's category gets `ratio` times the weight of everything before it, that is the
    # share post_migration_share of the interests from then on.
    ratio = config.post_migration_share / (1 - config.post_migration_share)
    jump_weight = np.zeros((user.size, MAX_JUMPS_PER_USER))
    for j in range(MAX_JUMPS_PER_USER):
        jump_weight[:, j] = np.where(epoch > j, ratio * total, 0.0)
        total += jump_weight[:, j]
    cum = np.cumsum(np.concatenate((weight, jump_weight), axis=1), axis=1)
    return epoch, honeymoon, cum / total[:, None]


def _draw_slot(rng: np.random.Generator, cum: np.ndarray) -> np.ndarray:
    """One slot index per row of cumulative probabilities ``cum`` (n, K) -> (n,)."""
    u = rng.random(cum.shape[0])
    return np.minimum((cum < u[:, None]).sum(axis=1), cum.shape[1] - 1)


@dataclass(frozen=True)
class _ViewDraws:
    """The random part of the views' categories, which does not depend on where jumps go: slot
    indices into the user's (interest slots + jump categories) table, and explorations."""

    session_slot: np.ndarray  # (S,) the session's slot (a jump's slot in its honeymoon)
    alt: np.ndarray  # view indices that redraw from the user's interests ...
    alt_slot: np.ndarray  # ... and the slots they draw
    explore: np.ndarray  # view indices that explore ...
    explored: np.ndarray  # ... and their popular-weighted random categories
    # Set when explorations follow the graph: which do (bool) and the uniforms of their pick.
    follow: np.ndarray | None = None
    follow_u: np.ndarray | None = None


def _draw_view_categories(
    rng: np.random.Generator,
    catalog: _Catalog,
    sessions: _Sessions,
    views: _Views,
    interests: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> _ViewDraws:
    epoch, honeymoon, cum = interests
    # In the 24 hours after a jump the whole session (and every fresh view) is the new category.
    session_slot = np.where(honeymoon, MAX_SLOTS + np.maximum(epoch - 1, 0), _draw_slot(rng, cum))
    roll = rng.random(views.session.size)
    free = ~np.repeat(honeymoon, np.diff(sessions.first_view))
    alt = np.flatnonzero(free & (roll >= P_STAY) & (roll < P_STAY + P_ALT))
    alt_slot = _draw_slot(rng, cum[views.session[alt]])
    explore = np.flatnonzero(free & (roll >= P_STAY + P_ALT))
    explored = rng.choice(catalog.category_p.size, size=explore.size, p=catalog.category_p)
    return _ViewDraws(session_slot, alt, alt_slot, explore, explored)


def _view_categories(
    draws: _ViewDraws,
    users: _Users,
    jumps: _Jumps,
    sessions: _Sessions,
    views: _Views,
    graph: _Graph | None = None,
) -> np.ndarray:
    """Category index of each view's fresh item draw, shape (V,), given where the jumps go."""
    slot_table = np.concatenate((users.slot_category, jumps.category), axis=1)
    per_session = np.diff(sessions.first_view)
    category = np.repeat(slot_table[sessions.user, draws.session_slot], per_session)
    alt = draws.alt
    category[alt] = slot_table[views.user[alt], draws.alt_slot]
    explore, explored = draws.explore, draws.explored
    if draws.follow is not None and graph is not None and graph.dst.shape[1] > 0:
        # An exploring view moves to a neighbour of its session's category.
        follow = np.flatnonzero(draws.follow)
        explored = explored.copy()
        explored[follow] = graph.pick(category[explore[follow]], draws.follow_u[follow])
    # Exploring a category the user will later jump to would spoil the jump's novelty.
    user = views.user[explore]
    spoils = (jumps.category[user] == explored[:, None]) & (
        jumps.time_s[user] > sessions.start_s[views.session[explore], None]
    )
    category[explore] = np.where(spoils.any(axis=1), category[explore], explored)
    # A user's first views touch each of their slots once (and are never revisits), so that a
    # later visit to a slot is not mistaken for a move to a new category.
    onboarding = np.flatnonzero(views.ordinal < users.n_slots[views.user])
    category[onboarding] = users.slot_category[views.user[onboarding], views.ordinal[onboarding]]
    return category


def _revisit(
    rng: np.random.Generator,
    n_views: int,
    users: _Users,
    sessions: _Sessions,
    views: _Views,
    interests: tuple[np.ndarray, np.ndarray, np.ndarray],
    probability: float,
) -> np.ndarray:
    """Each view's source view (V,): itself (a fresh draw), or with ``probability`` one of the
    user's few previous views, whose item it takes. Onboarding views never revisit; a honeymoon
    view only revisits views since the jump."""
    per_session = np.diff(sessions.first_view)
    epoch = np.repeat(interests[0], per_session)
    honeymoon = np.repeat(interests[1], per_session)
    index = np.arange(n_views)
    lag = rng.geometric(REPEAT_LAG_P, size=index.size)
    source = index - lag
    revisit = np.flatnonzero(
        (rng.random(index.size) < probability)
        & (views.ordinal >= users.n_slots[views.user])
        & (lag <= views.ordinal)
    )
    keep = ~honeymoon[revisit] | (epoch[source[revisit]] == epoch[revisit])
    revisit = revisit[keep]
    # A revisit of a revisit: follow the pointers to a fresh draw (pointer doubling, log steps).
    root = index.copy()
    root[revisit] = source[revisit]
    while revisit.size:
        hop = root[root[revisit]]
        moved = hop != root[revisit]
        root[revisit] = hop
        revisit = revisit[moved]
    return root


def _associate_jumps(
    rng: np.random.Generator,
    config: SimulationConfig,
    users: _Users,
    catalog: _Catalog,
    sessions: _Sessions,
    views: _Views,
    draws: _ViewDraws,
    root: np.ndarray,
    funnel: tuple[np.ndarray, np.ndarray, np.ndarray],
    category_ids: np.ndarray,
    graph: _Graph,
    jumps: _Jumps,
) -> tuple[_Jumps, np.ndarray]:
    """Send jumps along the graph, one jump index at a time; returns the jumps and which of them
    follow the graph ((N, MAX_JUMPS_PER_USER) bool).

    Only where jumps go changes (their times and every random draw of the log stay), so the log
    up to jump j is known once jumps < j are placed: the category a jump leaves is the user's
    top category by long-half-life, behaviour-weighted decayed interest over those events, the
    same rule as ``from_category_id``. With ``association_probability`` the jump goes to a
    weighted neighbour of it the user never had (slots and earlier jumps); otherwise, or when no
    neighbour is fresh, to the random (popular-weighted) fresh category of the graph-free story.
    """
    category = jumps.category.copy()
    associated = np.zeros(category.shape, dtype=bool)
    parent, behavior, time_us = funnel
    event_user, event_view = views.user[parent], root[parent]
    features = FeatureConfig()
    behavior_weight = np.array([features.behavior_weights.get(b, 0.0) for b in BEHAVIORS])
    rate = -math.log(2) / (features.long_half_life_hours * 3600)
    for j, (who, random_draws) in enumerate(jumps.draws):
        view_category = _view_categories(
            draws, users, _Jumps(jumps.time_s, category), sessions, views, graph
        )
        jumping = np.zeros(config.users, dtype=bool)
        jumping[who] = True
        event = np.flatnonzero(jumping[event_user])
        jump_us = jumps.time_s[event_user[event], j] * MICROS
        before = time_us[event] < jump_us
        event, jump_us = event[before], jump_us[before]
        decay = np.exp(rate * ((jump_us - time_us[event]) / MICROS))
        event_category = view_category[event_view[event]]
        top = (
            pl.DataFrame(
                {
                    "user": event_user[event],
                    "category": event_category,
                    "category_id": category_ids[event_category],
                    "score": behavior_weight[behavior[event]] * decay,
                }
            )
            .group_by("user", "category", "category_id")
            .agg(pl.col("score").sum())
            .sort("user", "score", "category_id", descending=[False, True, False])
            .group_by("user", maintain_order=True)
            .agg(pl.col("category").first())
        )
        source = np.full(config.users, -1, dtype=np.int64)
        source[top["user"].to_numpy()] = top["category"].to_numpy()
        source = source[who]
        rows = np.arange(who.size)
        known = np.concatenate((users.slot_category[who], category[who, :j]), axis=1)
        # The graph-free choice, redone against earlier jumps' (maybe new) categories.
        fresh = (random_draws[:, :, None] != known[:, None, :]).all(axis=2)
        fallback = np.where(fresh.any(axis=1), random_draws[rows, fresh.argmax(axis=1)], -1)
        neighbours = graph.dst[np.maximum(source, 0)]
        open_ = (neighbours[:, :, None] != known[:, None, :]).all(axis=2) & (source >= 0)[:, None]
        weight = np.where(open_, graph.weight[np.maximum(source, 0)], 0.0)
        total = weight.sum(axis=1)
        follow = (rng.random(who.size) < config.association_probability) & (total > 0)
        threshold = (1.0 - rng.random(who.size)) * total  # in (0, total]: a positive weight
        index = (np.cumsum(weight, axis=1) < threshold[:, None]).sum(axis=1)
        index = np.minimum(index, neighbours.shape[1] - 1)
        new = np.where(follow, neighbours[rows, index], fallback)
        for row in np.flatnonzero(new < 0):  # all 32 draws known now: rare, tiny catalogues
            unknown = np.setdiff1d(np.arange(catalog.category_p.size), known[row])
            new[row] = (
                unknown[catalog.category_p[unknown].argmax()]
                if unknown.size
                else category[who[row], j]
            )
        category[who, j] = new
        associated[who, j] = follow
    return _Jumps(jumps.time_s, category), associated


def _funnel(rng: np.random.Generator, view_time_us: np.ndarray) -> tuple[np.ndarray, ...]:
    """Add cart, fav and buy events after views of the same item.

    Returns, per event (E,): the index of its view, its behaviour code (uint32) and its time
    (us); views first, then carts, favs and buys.
    """
    n = view_time_us.size

    def after(times: np.ndarray, mean_seconds: float) -> np.ndarray:
        return times + ((1.0 + rng.exponential(mean_seconds, times.size)) * MICROS).astype(np.int64)

    cart = np.flatnonzero(rng.random(n) < P_CART)
    fav = np.flatnonzero(rng.random(n) < P_FAV)
    p_buy = np.full(n, P_BUY_DIRECT)
    p_buy[cart] = P_BUY_AFTER_CART
    buy = np.flatnonzero(rng.random(n) < p_buy)
    cart_time = after(view_time_us[cart], FOLLOW_UP_SECONDS["cart"])
    last_step = view_time_us.copy()
    last_step[cart] = cart_time  # a buy follows the cart when there is one
    parts = (
        (VIEW, np.arange(n), view_time_us),
        (CART, cart, cart_time),
        (FAV, fav, after(view_time_us[fav], FOLLOW_UP_SECONDS["fav"])),
        (BUY, buy, after(last_step[buy], FOLLOW_UP_SECONDS["buy"])),
    )
    parent = np.concatenate([views for _, views, _ in parts])
    behavior = np.repeat(
        np.array([code for code, _, _ in parts], np.uint32), [views.size for _, views, _ in parts]
    )
    time_us = np.concatenate([times for _, _, times in parts])
    return parent, behavior, time_us


def _epoch_micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def _events_frame(
    config: SimulationConfig,
    sessions: _Sessions,
    views: _Views,
    view_item: np.ndarray,
    funnel: tuple[np.ndarray, np.ndarray, np.ndarray],
    ids: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> pl.DataFrame:
    """The canonical events table, sorted by (user_id, event_time)."""
    parent, behavior, time_us = funnel
    item_ids, category_ids, item_category = ids
    user = views.user[parent]
    # Views are nearly in order already and the follow-ups are sorted runs: a stable (merge) sort
    # of one int64 key is quick; lexsort is the slow fallback when the key would overflow.
    span_us = (config.days + 2) * SECONDS_PER_DAY * MICROS
    if config.users * span_us < 2**62:
        order = np.argsort(user * span_us + time_us, kind="stable")
    else:
        order = np.lexsort((time_us, user))
    parent, time_us = parent[order], time_us[order]
    item = view_item[parent]
    ordinal = np.arange(sessions.user.size) - sessions.first_of_user[sessions.user]
    session_ids = pl.DataFrame({"user": sessions.user + 1, "ordinal": ordinal}).select(
        pl.concat_str(pl.col("user"), pl.lit("-"), pl.col("ordinal"))
    )
    return pl.DataFrame(
        {
            "user_id": pl.Series(user[order] + 1, dtype=pl.Int64),
            "item_id": pl.Series(item_ids[item], dtype=pl.Int64),
            "category_id": pl.Series(category_ids[item_category[item]], dtype=pl.Int64),
            "behavior": pl.Series(behavior[order]).cat.to(pl.Enum(BEHAVIORS)).cast(pl.Utf8),
            "event_time": pl.Series(_epoch_micros(config.start) + time_us).cast(pl.Datetime("us")),
            "session_id": session_ids.to_series().gather(views.session[parent]),
        }
    )


def _migrations_frame(
    config: SimulationConfig,
    jumps: _Jumps,
    associated: np.ndarray,
    category_ids: np.ndarray,
    events: pl.DataFrame,
) -> pl.DataFrame:
    """The planted jumps; from_category_id is the user's top category by long-half-life decayed,
    behaviour-weighted interest over the events before the jump (what a detector sees)."""
    who, j = np.nonzero(jumps.category >= 0)
    planted = pl.DataFrame(
        {
            "user_id": pl.Series(who + 1, dtype=pl.Int64),
            "to_category_id": pl.Series(category_ids[jumps.category[who, j]], dtype=pl.Int64),
            "migrated_at": pl.Series(
                _epoch_micros(config.start) + jumps.time_s[who, j] * MICROS
            ).cast(pl.Datetime("us")),
            "associated": pl.Series(associated[who, j], dtype=pl.Boolean),
        }
    )
    features = FeatureConfig()
    weights = pl.DataFrame(
        {
            "behavior": list(features.behavior_weights),
            "weight": list(features.behavior_weights.values()),
        }
    )
    age_s = (pl.col("migrated_at") - pl.col("event_time")).dt.total_microseconds() / MICROS
    decay = (-math.log(2) / (features.long_half_life_hours * 3600) * age_s).exp()
    from_category = (
        events.lazy()
        .join(planted.lazy().select("user_id", "migrated_at"), on="user_id")
        .filter(pl.col("event_time") < pl.col("migrated_at"))
        .join(weights.lazy(), on="behavior")
        .group_by("user_id", "migrated_at", "category_id")
        .agg(score=(pl.col("weight") * decay).sum())
        .sort(
            "user_id", "migrated_at", "score", "category_id", descending=[False, False, True, False]
        )
        .group_by("user_id", "migrated_at", maintain_order=True)
        .agg(from_category_id=pl.col("category_id").first())
    )
    return (
        planted.lazy()
        .join(from_category, on=["user_id", "migrated_at"], how="left")
        .select("user_id", "from_category_id", "to_category_id", "migrated_at", "associated")
        .sort("user_id", "migrated_at")
        .collect()
    )


def _associations_frame(graph: _Graph | None, category_ids: np.ndarray | None) -> pl.DataFrame:
    """The graph as (src_category_id, dst_category_id, weight) rows, by (src, weight desc)."""
    if graph is None or category_ids is None:
        src = dst = np.empty(0, dtype=np.int64)
        weight = np.empty(0)
    else:
        k = graph.dst.shape[1]
        src = np.repeat(category_ids, k)
        dst = category_ids[graph.dst.ravel()]
        weight = graph.weight.ravel()
    return pl.DataFrame(
        {
            "src_category_id": pl.Series(src, dtype=pl.Int64),
            "dst_category_id": pl.Series(dst, dtype=pl.Int64),
            "weight": pl.Series(weight, dtype=pl.Float64),
        }
    ).sort("src_category_id", "weight", descending=[False, True], maintain_order=True)


def simulate(config: SimulationConfig) -> Simulation:
    """Generate the event log, the planted migrations and the category association graph of
    ``config`` (deterministic in seed)."""
    rng = np.random.default_rng(config.seed)
    catalog = _build_catalog(rng, config.items, config.n_categories)
    users = _build_users(rng, config, catalog)
    sessions = _build_sessions(rng, config, users)
    views = _build_views(rng, sessions)
    jumps = _plan_jumps(rng, config, users, catalog, sessions, views)
    interests = _session_interests(config, users, jumps, sessions)
    draws = _draw_view_categories(rng, catalog, sessions, views, interests)
    item_u = rng.random(views.session.size)  # the fresh item draws' uniforms
    root = _revisit(
        rng, views.session.size, users, sessions, views, interests, config.repeat_probability
    )
    funnel = _funnel(rng, views.time_us)
    # Shuffled ids, so that neither an item's id nor a category's id reveals its rank.
    ids = (
        rng.permutation(config.items).astype(np.int64) + 1,
        rng.permutation(catalog.category_p.size).astype(np.int64) + 1,
        catalog.item_category,
    )
    # The graph and its draws have their own stream: the main one above is the same with or
    # without it, so association_probability=0 reproduces the graph-free simulator exactly.
    graph_rng = np.random.default_rng([config.seed, ASSOCIATION_STREAM])
    graph = _build_graph(graph_rng, catalog, config.associations_per_category)
    associated = np.zeros(jumps.category.shape, dtype=bool)
    if config.follows_associations:
        explorations = draws.explore.size
        draws = _ViewDraws(
            draws.session_slot,
            draws.alt,
            draws.alt_slot,
            draws.explore,
            draws.explored,
            follow=graph_rng.random(explorations) < config.association_probability,
            follow_u=graph_rng.random(explorations),
        )
        jumps, associated = _associate_jumps(
            graph_rng,
            config,
            users,
            catalog,
            sessions,
            views,
            draws,
            root,
            funnel,
            ids[1],
            graph,
            jumps,
        )
    category = _view_categories(draws, users, jumps, sessions, views, graph)
    item = catalog.items_at(category, item_u)[root]
    # Sessions and funnels that run past midnight of the last day are cut at the horizon, so
    # the last simulated day is as full as the others (a last-day split tests a whole day).
    horizon = config.start + timedelta(days=config.days)
    events = _events_frame(config, sessions, views, item, funnel, ids).filter(
        pl.col("event_time") < horizon
    )
    return Simulation(
        events,
        _migrations_frame(config, jumps, associated, ids[1], events),
        _associations_frame(graph, ids[1]),
    )


def write_simulation(sim: Simulation, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``events.parquet``, ``migrations.parquet`` and ``category_associations.parquet``
    into ``directory`` (created if missing), each atomically; returns the first two's paths
    (the graph's is ``directory / ASSOCIATIONS_FILE``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(sim.associations, directory / ASSOCIATIONS_FILE)
    return (
        _write_atomically(sim.events, directory / "events.parquet"),
        _write_atomically(sim.migrations, directory / "migrations.parquet"),
    )


def _write_atomically(frame: pl.DataFrame, path: Path) -> Path:
    # A temp file in the same folder, then a rename: readers never see half a file.
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        frame.write_parquet(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path
