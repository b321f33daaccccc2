"""Model folders: manifests, verification, newest-valid choice, pickle-free encoder files."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from recsys.models import artifacts as A

AS_OF = datetime(2024, 3, 1)


def make_model(directory: Path, *, as_of: datetime = AS_OF, model: str = "m") -> dict:
    """A model folder with top-level files and a nested SavedModel-like folder."""
    (directory / "tower" / "variables").mkdir(parents=True)
    (directory / "tower" / "saved_model.pb").write_bytes(b"\x08\x01graph")
    (directory / "tower" / "variables" / "variables.index").write_bytes(bytes(range(64)))
    A.write_json(directory / "ranker.json", {"weights": [0.5, -1.0]})
    A.save_arrays(directory / "ann.npz", ids=np.arange(4), emb=np.eye(4, dtype=np.float32))
    return A.write_manifest(
        directory, model=model, version=directory.name, as_of=as_of, extra={"ranker": "lgbm"}
    )


def flip_a_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def one_line_error(directory: Path, match: str) -> str:
    with pytest.raises(A.ArtifactError, match=match) as info:
        A.verify(directory)
    message = str(info.value)
    assert "\n" not in message and str(directory) in message
    return message


def test_manifest_lists_every_file_and_round_trips(tmp_path):
    written = make_model(tmp_path / "v1")
    assert A.verify(tmp_path / "v1") == written == A.read_json(tmp_path / "v1" / A.MANIFEST)
    assert written["format_version"] == A.FORMAT_VERSION
    assert (written["model"], written["version"], written["ranker"]) == ("m", "v1", "lgbm")
    assert datetime.fromisoformat(written["as_of"]) == AS_OF
    assert [f["path"] for f in written["files"]] == [
        "ann.npz",
        "ranker.json",
        "tower/saved_model.pb",
        "tower/variables/variables.index",
    ]
    entry = written["files"][2]
    assert entry["bytes"] == 7 and len(entry["sha256"]) == 64
    assert not [p for p in (tmp_path / "v1").iterdir() if p.name.endswith(".tmp")]


def test_extra_may_not_override_the_manifest_keys(tmp_path):
    (tmp_path / "v1").mkdir()
    with pytest.raises(ValueError, match="files"):
        A.write_manifest(tmp_path / "v1", model="m", version="v1", as_of=AS_OF, extra={"files": 1})


@pytest.mark.parametrize(
    "path", ["ann.npz", "ranker.json", "tower/saved_model.pb", "tower/variables/variables.index"]
)
def test_a_flipped_byte_in_any_file_is_named(tmp_path, path):
    make_model(tmp_path / "v1")
    flip_a_byte(tmp_path / "v1" / path)
    one_line_error(tmp_path / "v1", f"file {path} does not match its sha256")


def test_a_truncated_file_is_named(tmp_path):
    make_model(tmp_path / "v1")
    file = tmp_path / "v1" / "ann.npz"
    file.write_bytes(file.read_bytes()[:-10])
    one_line_error(tmp_path / "v1", "file ann.npz has .* bytes.*partial")


def test_an_unlisted_file_is_refused(tmp_path):
    make_model(tmp_path / "v1")
    (tmp_path / "v1" / "tower" / "extra.bin").write_bytes(b"x")
    one_line_error(tmp_path / "v1", "file tower/extra.bin is not in the manifest")


def test_a_missing_file_is_refused(tmp_path):
    make_model(tmp_path / "v1")
    (tmp_path / "v1" / "tower" / "variables" / "variables.index").unlink()
    one_line_error(tmp_path / "v1", "file tower/variables/variables.index is missing")


def test_another_format_version_is_refused(tmp_path):
    manifest = make_model(tmp_path / "v1")
    A.write_json(tmp_path / "v1" / A.MANIFEST, manifest | {"format_version": 1})
    one_line_error(tmp_path / "v1", "format version 1, this recsys reads 2")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x80\x04pickle\n{not json", "is not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"format_version": 2}', "lacks a string 'model'"),
        (
            json.dumps(
                {
                    "format_version": 2,
                    "model": "m",
                    "version": "v",
                    "as_of": "soon",
                    "created_at": "2024-01-01",
                }
            ).encode(),
            "as_of 'soon' is not ISO",
        ),
    ],
)
def test_a_foreign_manifest_gives_a_one_line_error(tmp_path, content, match):
    make_model(tmp_path / "v1")
    (tmp_path / "v1" / A.MANIFEST).write_bytes(content)
    one_line_error(tmp_path / "v1", match)


def test_a_manifest_path_may_not_leave_the_folder(tmp_path):
    manifest = make_model(tmp_path / "v1")
    manifest["files"][0]["path"] = "../v1/ann.npz"
    A.write_json(tmp_path / "v1" / A.MANIFEST, manifest)
    one_line_error(tmp_path / "v1", "'files' must list")


def test_a_folder_without_manifest_is_refused(tmp_path):
    (tmp_path / "v1").mkdir()
    one_line_error(tmp_path / "v1", "no manifest.json")


def test_latest_verified_skips_a_planted_newer_folder(tmp_path, caplog):
    models = tmp_path / "models"
    make_model(models / "old", as_of=datetime(2024, 1, 1))
    make_model(models / "good", as_of=datetime(2024, 2, 1))
    make_model(models / "other", as_of=datetime(2024, 6, 1), model="another")
    planted = make_model(models / "planted", as_of=datetime(2024, 5, 1))
    flip_a_byte(models / "planted" / "ranker.json")
    assert A.read_json(models / "planted" / A.MANIFEST) == planted
    (models / "notes").mkdir()
    (models / "junk").mkdir()
    (models / "junk" / A.MANIFEST).write_text("not json")
    with caplog.at_level(logging.WARNING, logger=A.__name__):
        folder, manifest = A.latest_verified(models, "m")
    assert folder == models / "good" and manifest["version"] == "good"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert any("planted: file ranker.json does not match its sha256" in w for w in warnings)
    assert any("junk" in w for w in warnings)
    assert A.latest_verified(models)[0] == models / "other"


def test_latest_verified_breaks_as_of_ties_by_creation_then_name(tmp_path):
    models = tmp_path / "models"
    make_model(models / "b")
    make_model(models / "a")  # same as_of, created later
    assert A.latest_verified(models)[0] == models / "a"


def test_latest_verified_without_a_valid_folder(tmp_path):
    message = "no complete, verified model in .*: run `recsys train` first"
    with pytest.raises(A.ArtifactError, match=message):
        A.latest_verified(tmp_path / "absent")
    make_model(tmp_path / "v1")
    (tmp_path / "v1" / "ann.npz").unlink()
    with pytest.raises(A.ArtifactError, match=message):
        A.latest_verified(tmp_path)
    with pytest.raises(A.ArtifactError, match=message):
        A.latest_verified(tmp_path, "another")


def test_arrays_are_stored_without_pickle(tmp_path):
    arrays = {"ids": np.array([3, 1], np.int64), "emb": np.ones((2, 3), np.float32)}
    A.save_arrays(tmp_path / "a.npz", **arrays)
    loaded = A.load_arrays(tmp_path / "a.npz")
    assert loaded.keys() == arrays.keys()
    for name, expected in arrays.items():
        assert loaded[name].dtype == expected.dtype
        np.testing.assert_array_equal(loaded[name], expected)
    with pytest.raises(ValueError):
        A.save_arrays(tmp_path / "b.npz", objects=np.array([{"a": 1}], dtype=object))
    assert not (tmp_path / "b.npz").exists() and len(list(tmp_path.iterdir())) == 1
    np.savez(tmp_path / "pickled.npz", objects=np.array([{"a": 1}], dtype=object))
    with pytest.raises(A.ArtifactError, match="pickled.npz is not an npz file of plain arrays"):
        A.load_arrays(tmp_path / "pickled.npz")


def test_artifacts_does_not_import_tensorflow():
    import subprocess

    code = "import sys, recsys.models.artifacts; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_feature_encoder_round_trips_exactly(tmp_path):
    from recsys.models import towers as T
    from recsys.ranking.frames import IdIndex

    encoder = T.FeatureEncoder(
        IdIndex(np.array([10, 11, 12, 40, 2**40])),
        IdIndex(np.array([7, 3])),
        interest_slots=3,
        sequence_length=4,
    )
    encoder.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [A.ENCODER_JSON, A.ENCODER_ARRAYS]
    loaded = T.FeatureEncoder.load(tmp_path)
    assert (loaded.interest_slots, loaded.sequence_length) == (3, 4)
    assert loaded.items.ids.dtype == np.int64
    np.testing.assert_array_equal(loaded.items.ids, encoder.items.ids)
    np.testing.assert_array_equal(loaded.categories.ids, encoder.categories.ids)
    features = {
        T.SEQ_ITEMS: [12, 99, 2**40, 10, 11],
        T.SEQ_BEHAVIORS: ["view", "buy", "cart", "view", "fav"],
        T.SEQ_GAPS: [60.0, 3600.0, 7200.0, 1.0, 2.0],
        T.INTEREST_CATEGORIES: [3, 5, 7],
        T.INTEREST_SCORES: [0.5, 0.25, 0.25],
        "user_behavior_funnel__n_view": 4.0,
    }
    gnn = np.arange(6, dtype=np.float32)[None]
    before = encoder.encode_queries(T.profile_frame(5, features), gnn)
    after = loaded.encode_queries(T.profile_frame(5, features), gnn)
    assert before.keys() == after.keys()
    for name, expected in before.items():
        assert after[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(after[name], expected, err_msg=name)
    # Known ids got vocabulary positions, so the comparison above covered the vocabularies.
    assert before["seq_items"].tolist() == [[2, -1, 4, 0]]


def test_feature_encoder_refuses_malformed_files(tmp_path):
    from recsys.models import towers as T

    A.write_json(tmp_path / A.ENCODER_JSON, {"interest_slots": 3})
    A.save_arrays(tmp_path / A.ENCODER_ARRAYS, items=np.arange(3), categories=np.arange(2))
    with pytest.raises(A.ArtifactError, match="lacks integer sizes"):
        T.FeatureEncoder.load(tmp_path)
    A.write_json(tmp_path / A.ENCODER_JSON, {"interest_slots": 3, "sequence_length": 4})
    A.save_arrays(tmp_path / A.ENCODER_ARRAYS, items=np.arange(3.0), categories=np.arange(2))
    with pytest.raises(A.ArtifactError, match="lacks int64"):
        T.FeatureEncoder.load(tmp_path)


def test_saved_retrieval_verifies_the_folder_before_loading(tmp_path):
    from recsys.models.saved import SavedRetrieval

    make_model(tmp_path / "v1")
    flip_a_byte(tmp_path / "v1" / "tower" / "saved_model.pb")
    with pytest.raises(A.ArtifactError, match="tower/saved_model.pb does not match"):
        SavedRetrieval(tmp_path / "v1")
    make_model(tmp_path / "v2")
    with pytest.raises(ValueError, match="lacks query_tower, encoder.json, encoder.npz"):
        SavedRetrieval(tmp_path / "v2")


def test_tensorflow_noise_is_muted_only_by_default_and_precisely():
    import subprocess

    code = "import os, recsys; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    for env, expected in (({}, "3"), ({"TF_CPP_MIN_LOG_LEVEL": "0"}, "0")):
        environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} | env
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=environ
        )
        assert result.stdout.strip() == expected, result.stderr
    tf_logger = logging.getLogger("tensorflow")

    def passes(message: str) -> bool:
        return tf_logger.filter(tf_logger.makeRecord("tensorflow", 30, "f", 1, message, (), None))

    mapping = "Mapping types may not work well with tf.nest. Prefer using MutableMapping for {}"
    assert not passes(mapping.format("<class 'tensorflow_gnn.graph.graph_tensor._Immutable'>"))
    assert passes(mapping.format("<class 'mypackage.FrozenDict'>"))
    assert not passes("Compiled the loaded model, but the compiled metrics have yet to be built.")
    assert not passes(
        "Model's `__init__()` arguments contain non-serializable objects. Please implement a "
        "`get_config()` method in the subclassed Model for proper saving and loading. "
        "Defaulting to empty config."
    )
    assert passes("Model's `__init__()` arguments contain non-serializable objects.")
    assert passes("5 out of the last 17 calls to <function train_step> triggered retracing.")
