"""TF-GNN interest model: graph construction, link-prediction training, parquet export."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.models import ModelInputError, gnn

N_USERS, N_ITEMS, N_CATS = 60, 40, 4


def planted_pairs(rng: np.random.Generator, n: int, user_cat: np.ndarray, item_cat: np.ndarray):
    """(user, item) pairs where every user interacts only with items of its own category."""
    users = rng.integers(0, N_USERS, n)
    items = np.array([rng.choice(np.flatnonzero(item_cat == user_cat[u])) for u in users])
    return users, items


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(0)
    item_cat = np.arange(N_ITEMS) % N_CATS
    user_cat = rng.integers(0, N_CATS, N_USERS)
    views = planted_pairs(rng, 600, user_cat, item_cat)
    buys = planted_pairs(rng, 100, user_cat, item_cat)
    graph = gnn.build_graph(
        n_users=N_USERS,
        n_items=N_ITEMS,
        n_categories=N_CATS,
        user_item_edges={
            "view": (*views, np.ones(600)),
            "buy": (*buys, np.full(100, 4.0)),
        },
        item_item_edges=(views[1][:-1], views[1][1:], np.ones(599)),
        item_category=item_cat,
    )
    future = planted_pairs(rng, 400, user_cat, item_cat)
    held_out = planted_pairs(rng, 200, user_cat, item_cat)
    return graph, future, held_out, item_cat


def test_graph_sizes_and_adjacency_equal_the_input():
    src, dst = np.array([0, 1, 1]), np.array([2, 0, 1])
    graph = gnn.build_graph(
        n_users=2,
        n_items=3,
        n_categories=2,
        user_item_edges={"cart": (src, dst, np.array([3.0, 3.0, 6.0]))},
        item_item_edges=(np.array([0]), np.array([2]), np.array([1.0])),
        item_category=np.array([1, 0, 1]),
    )
    assert {n: int(graph.node_sets[n].total_size) for n in gnn.NODE_SETS} == {
        "user": 2,
        "item": 3,
        "category": 2,
    }
    cart = graph.edge_sets["cart"]
    np.testing.assert_array_equal(cart.adjacency.source.numpy(), src)
    np.testing.assert_array_equal(cart.adjacency.target.numpy(), dst)
    np.testing.assert_array_equal(cart["weight"].numpy(), [3.0, 3.0, 6.0])
    rev = graph.edge_sets["cart_rev"]
    np.testing.assert_array_equal(rev.adjacency.source.numpy(), dst)
    np.testing.assert_array_equal(rev.adjacency.target.numpy(), src)
    assert int(graph.edge_sets["view"].total_size) == 0
    np.testing.assert_array_equal(
        graph.edge_sets["in_category"].adjacency.target.numpy(), [1, 0, 1]
    )
    assert gnn.num_input_edges(graph) == 3 + 1 + 3


def test_bad_input_raises_clear_errors():
    with pytest.raises(ModelInputError, match="outside"):
        gnn.build_graph(
            n_users=1,
            n_items=1,
            n_categories=1,
            user_item_edges={"view": (np.array([1]), np.array([0]), np.array([1.0]))},
            item_item_edges=(np.zeros(0, int), np.zeros(0, int), np.zeros(0)),
            item_category=np.array([0]),
        )
    with pytest.raises(ModelInputError, match="unknown behaviours"):
        gnn.build_graph(
            n_users=1,
            n_items=1,
            n_categories=1,
            user_item_edges={"click": (np.array([0]), np.array([0]), np.array([1.0]))},
            item_item_edges=(np.zeros(0, int), np.zeros(0, int), np.zeros(0)),
            item_category=np.array([0]),
        )


def test_encoder_has_the_three_named_steps(planted):
    graph = planted[0]
    encoder = gnn.build_gnn_encoder(
        graph_spec=graph.spec,
        node_counts={n: int(graph.node_sets[n].total_size) for n in gnn.NODE_SETS},
        hidden_dim=8,
        num_updates=2,
    )
    names = [layer.name for layer in encoder.layers]
    assert names[1:] == ["encode", "update_0", "update_1", "readout"]
    out = encoder(graph)
    assert out["item"].shape == (N_ITEMS, 8)
    np.testing.assert_allclose(np.linalg.norm(out["user"].numpy(), axis=1), 1.0, rtol=1e-5)


def auc(emb: gnn.GnnEmbeddings, users, items, rng) -> float:
    negatives = rng.integers(0, N_ITEMS, len(users))
    pos = np.sum(emb.user[users] * emb.item[items], axis=1)
    neg = np.sum(emb.user[users] * emb.item[negatives], axis=1)
    return float(np.mean(pos[:, None] > neg[None, :]))


def test_full_graph_training_ranks_held_out_positives_above_random(planted, tmp_path):
    graph, (tu, ti), (hu, hi), _ = planted
    config = gnn.GnnConfig(hidden_dim=16, epochs=4, batch_size=100, show_progress=False)
    result = gnn.train_gnn(graph, gnn.LinkTargets(tu, ti, np.ones(len(tu))), config=config)
    assert result.mode == "full"
    assert result.losses[-1] < result.losses[0]
    assert auc(result.embeddings, hu, hi, np.random.default_rng(1)) > 0.7

    paths = result.embeddings.to_parquet(
        tmp_path,
        user_ids=np.arange(N_USERS) + 1000,
        item_ids=np.arange(N_ITEMS) + 5000,
        category_ids=np.arange(N_CATS) + 7,
    )
    table = pq.read_table(paths["item"])
    assert table.column("item_id").to_pylist() == list(range(5000, 5000 + N_ITEMS))
    np.testing.assert_allclose(
        np.array(table.column("embedding").to_pylist()), result.embeddings.item, rtol=1e-6
    )


@pytest.mark.slow  # tracing the sampler's many ops takes minutes on 2 cores
def test_sampled_path_trains_on_subgraphs(planted):
    graph, (tu, ti), _, _ = planted
    config = gnn.GnnConfig(
        hidden_dim=8,
        epochs=1,
        batch_size=200,
        training_mode="auto",
        max_full_graph_edges=10,  # forces the sampler on this small graph
        num_updates=1,
        sample_sizes=(2,),  # one hop per update; fewer sampling ops keep tracing short
        show_progress=False,
    )
    result = gnn.train_gnn(graph, gnn.LinkTargets(tu, ti, np.ones(len(tu))), config=config)
    assert result.mode == "sampled"
    assert all(np.isfinite(result.losses))
    emb = result.embeddings
    assert emb.user.shape == (N_USERS, 8)
    assert emb.item.shape == (N_ITEMS, 8)
    assert emb.category.shape == (N_CATS, 8)


def test_sampled_subgraph_has_seed_first_and_all_edge_sets(planted):
    graph = planted[0]
    import tensorflow as tf

    subgraphs = gnn.InMemorySubgraphs(graph, sample_sizes=(2,), seed=0)
    seeds = tf.constant([5, 9, 5], tf.int64)
    sub = subgraphs("user", seeds)
    assert int(sub.num_components) == 3
    starts = np.cumsum(sub.node_sets["user"].sizes.numpy()) - sub.node_sets["user"].sizes.numpy()
    np.testing.assert_array_equal(sub.node_sets["user"]["id"].numpy()[starts], [5, 9, 5])
    assert set(sub.edge_sets) == set(graph.edge_sets)
