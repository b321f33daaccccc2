"""The README's results section is what docs/results/*.json renders (recsys.evaluation.readme)."""

import json

import numpy as np
import pytest

from recsys.evaluation import readme
from recsys.evaluation.metrics import evaluate
from recsys.evaluation.report import metrics_rows
from recsys.evaluation.run import with_models
from recsys.ranking.metrics import GroundTruth


def test_the_repository_readme_matches_the_committed_results():
    diff = readme.check()
    assert diff == [], "\n".join(diff)


def test_a_tampered_readme_is_reported():
    text = (readme.ROOT / readme.README).read_text()
    results = readme.load_results(readme.ROOT / readme.RESULTS_DIR)
    assert readme.check_text(text, results) == []
    body = readme.section(text)
    tampered = readme.replace_section(text, body + "\n| made-up model | 0.9999 |")
    assert readme.check_text(tampered, results) != []
    assert readme.check_text(readme.replace_section(text, ""), results) != []
    if any(c.isdigit() for c in body):  # a changed figure is caught too
        digit = next(c for c in body if c.isdigit())
        changed = body.replace(digit, str((int(digit) + 1) % 10), 1)
        assert readme.check_text(readme.replace_section(text, changed), results) != []
    with pytest.raises(readme.ReadmeError, match="markers"):
        readme.check_text(text.replace(readme.START, ""), results)


@pytest.fixture
def rows():
    truth = GroundTruth(np.array([1, 2, 3]), np.array([0, 1, 3, 4]), np.array([10, 20, 21, 30]))
    shift = GroundTruth(np.array([2]), np.array([0, 2]), np.array([20, 21]))
    width = 50
    pad = np.full((3, width - 2), -1)

    def lists(pairs):
        return np.hstack([np.array(pairs), pad])

    recs = {
        "repeat": lists([[10, 99], [98, 97], [96, 95]]),
        "blend": lists([[99, 98], [20, 97], [96, 95]]),
        "interest_model": lists([[10, 99], [20, 21], [30, 95]]),
        "interest_model-no_gnn": lists([[10, 99], [98, 97], [96, 95]]),
    }
    groups = {"all": truth, "shift": shift}
    results = evaluate(recs, truth, groups, catalogue_size=100, intervals=True)
    policies = {"interest_model": "learned_gbdt", "interest_model-no_gnn": "repeat"}
    return metrics_rows(with_models(results, policies))


def test_render_shows_baselines_learned_models_intervals_deltas_and_policy(rows):
    text = readme.render({"taobao": rows})
    assert text.startswith("### Taobao user behaviour sample (`docs/results/taobao.json`)")
    assert "Test users: all 3, shift 1." in text
    assert "| model | all NDCG@20 | all Recall@50 | shift NDCG@20 | shift Recall@50 |" in text
    lines = text.splitlines()
    models = [line.split(" | ")[0].removeprefix("| ") for line in lines if line.startswith("| ")]
    # baselines in the project's order, then the learned models; then the delta table
    assert models[:6] == [
        "model",
        "---",
        "repeat",
        "blend",
        "**interest_model** (learned_gbdt)",
        "interest_model-no_gnn (repeat)",
    ]
    assert models[6:] == [
        "model",
        "---",
        "best baseline",
        "interest_model",
        "interest_model-no_gnn",
    ]
    recall = next(
        r
        for r in rows
        if (r["model"], r["group"], r["metric"], r["k"]) == ("interest_model", "all", "recall", 50)
    )
    assert f"{recall['value']:.4f} [{recall['ci_low']:.4f}, {recall['ci_high']:.4f}]" in text
    assert f"{recall['delta_vs_best_baseline']:+.4f} [{recall['delta_ci_low']:+.4f}," in text
    assert "`interest_model` serves `learned_gbdt`" in text
    assert "`interest_model-no_gnn` serves `repeat`" in text
    assert readme.render({"taobao": rows}) == text  # deterministic
    assert "No results" in readme.render({})


def test_write_copies_the_metrics_and_rewrites_only_the_section(tmp_path, rows):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(rows, indent=1))
    root = tmp_path / "repo"
    root.mkdir()
    before, after = "# title\n\nintro\n\n", "\n\n## Next\n\nmore\n"
    (root / "README.md").write_text(f"{before}{readme.START}\nold text\n{readme.END}{after}")
    assert readme.check(root) != []
    assert readme.main(["--check", "--root", str(root)]) == 1

    path = readme.write("simulator", metrics, root)
    assert path == root / "docs" / "results" / "simulator.json"
    assert json.loads(path.read_text()) == rows
    text = (root / "README.md").read_text()
    assert text.startswith(before + readme.START) and text.endswith(readme.END + after)
    assert "old text" not in text and "### Simulator" in text
    assert readme.check(root) == []
    assert readme.main(["--check", "--root", str(root)]) == 0

    readme.write("taobao", metrics, root)  # known datasets render in a fixed order
    section = readme.section((root / "README.md").read_text())
    assert section.index("### Taobao") < section.index("### Simulator")

    (root / "README.md").write_text(text.replace("learned_gbdt", "blend"))
    assert readme.main(["--check", "--root", str(root)]) == 1
    (root / "README.md").write_text("no markers\n")
    with pytest.raises(readme.ReadmeError, match="markers"):
        readme.write("taobao", metrics, root)
    with pytest.raises(readme.ReadmeError, match="dataset name"):
        readme.write("../x", metrics, root)
    metrics.write_text("[]")
    with pytest.raises(readme.ReadmeError, match="non-empty"):
        readme.write("taobao", metrics, root)
