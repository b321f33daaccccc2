"""The README's results section, rendered from committed metrics.json copies so it cannot drift.

``docs/results/<dataset>.json`` holds a copy of one ``recsys evaluate`` run's metrics.json (the
rows of ``report.metrics_rows``). The README section between ``<!-- results:start -->`` and
``<!-- results:end -->`` is exactly ``render`` of those files: every baseline and every learned
model (the full model and its ablations) with NDCG@20 and Recall@50 and their 90% bootstrap
intervals on the all / shift / novel users, the learned models' differences to the best
baseline with their paired intervals, and the policy each learned model served.

    python -m recsys.evaluation.readme --write taobao DIR/evaluation/<run_id>/metrics.json
    python -m recsys.evaluation.readme --check     # exit 1 when the README section differs
    python -m recsys.evaluation.readme --render    # print the section
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recsys.evaluation.errors import EvaluationError
from recsys.evaluation.metrics import BASELINES, RESULT_SCHEMA

START = "<!-- results:start -->"
END = "<!-- results:end -->"
ROOT = Path(__file__).resolve().parents[2]
README = "README.md"
RESULTS_DIR = Path("docs") / "results"
# Known datasets first, in this order, with their titles; any other file follows by name.
DATASETS = {
    "taobao": "Taobao user behaviour sample",
    "simulator": "Simulator (`recsys simulate`)",
}
GROUPS = ("all", "shift", "novel")
HEADLINE = (("ndcg", 20), ("recall", 50))
METRIC_NAMES = {"ndcg": "NDCG", "recall": "Recall", "hit_rate": "HitRate"}

Rows = Sequence[Mapping[str, Any]]


class ReadmeError(EvaluationError):
    """The README lacks the markers, or a results file is not a metrics.json."""


def load_results(results_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """{dataset: metrics.json rows} of ``results_dir/*.json``, known datasets first."""
    files = {path.stem: path for path in sorted(results_dir.glob("*.json"))}
    order = [name for name in DATASETS if name in files]
    order += [name for name in files if name not in DATASETS]
    return {name: read_rows(files[name]) for name in order}


def read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReadmeError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(rows, list) or not rows:
        raise ReadmeError(f"{path}: not a metrics.json (a non-empty list of rows)")
    for row in rows:
        missing = [c for c in RESULT_SCHEMA if not isinstance(row, dict) or c not in row]
        if missing:
            raise ReadmeError(f"{path}: a row lacks {missing}")
    return rows


def render(results: Mapping[str, Rows]) -> str:
    """The section between the markers (without them): one block per dataset."""
    if not results:
        return (
            "No results are committed yet (`docs/results/*.json`); write them with "
            "`python -m recsys.evaluation.readme --write DATASET METRICS_JSON`."
        )
    return "\n\n".join(render_dataset(name, rows) for name, rows in results.items())


def render_dataset(name: str, rows: Rows) -> str:
    cells = {(r["model"], r["group"], r["metric"], int(r["k"])): r for r in rows}
    models = list(dict.fromkeys(r["model"] for r in rows))
    baselines = [m for m in BASELINES if m in models]
    learned = [m for m in models if m not in BASELINES]
    groups = [g for g in GROUPS if any(r["group"] == g for r in rows)]
    columns = [(g, m, k) for g in groups for m, k in HEADLINE]
    n_users = {r["group"]: int(r["n_users"]) for r in rows}
    policies = {m: _policy(rows, m) for m in learned}
    served = [m for m in learned if any(r["model"] == m and r.get("served") for r in rows)]

    title = DATASETS.get(name, name)
    users = ", ".join(f"{g} {n_users[g]:,}" for g in groups)
    lines = [
        f"### {title} (`{(RESULTS_DIR / f'{name}.json').as_posix()}`)",
        "",
        f"Test users: {users}. Mean over the group's users, 90% bootstrap interval over users "
        "in brackets.",
        "",
    ]
    header = ["model"] + [f"{g} {METRIC_NAMES[m]}@{k}" for g, m, k in columns]
    lines += _table_head(header)
    for model in baselines + learned:
        label = f"**{model}**" if model in served else model
        if policies.get(model):
            label += f" ({policies[model]})"
        values = [_value(cells.get((model, g, m, k))) for g, m, k in columns]
        lines.append(_row([label, *values]))
    if learned:
        lines += [
            "",
            "Learned models minus the best baseline of each column (paired bootstrap over the "
            "same users, 90% interval; **bold** when the interval excludes 0):",
            "",
        ]
        lines += _table_head(header)
        best = [_best_baseline(cells, learned, baselines, g, m, k) for g, m, k in columns]
        lines.append(_row(["best baseline", *best]))
        for model in learned:
            deltas = [_delta(cells.get((model, g, m, k))) for g, m, k in columns]
            lines.append(_row([model, *deltas]))
    if policies:
        served_text = "; ".join(
            f"`{m}` serves `{p}`" if p else f"`{m}`: no policy recorded"
            for m, p in policies.items()
        )
        lines += [
            "",
            f"Served policy (chosen on the validation day before T): {served_text}.",
        ]
    return "\n".join(lines)


def _policy(rows: Rows, model: str) -> str | None:
    found = {r.get("policy") for r in rows if r["model"] == model} - {None}
    return ", ".join(sorted(found)) if found else None


def _table_head(header: list[str]) -> list[str]:
    return [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _number(value: Any, signed: bool = False) -> str:
    return "-" if value is None else (f"{value:+.4f}" if signed else f"{value:.4f}")


def _value(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "-"
    text = _number(row["value"])
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        text += f" [{_number(row['ci_low'])}, {_number(row['ci_high'])}]"
    return text


def _delta(row: Mapping[str, Any] | None) -> str:
    if row is None or row.get("delta_vs_best_baseline") is None:
        return "-"
    text = _number(row["delta_vs_best_baseline"], signed=True)
    low, high = row.get("delta_ci_low"), row.get("delta_ci_high")
    if low is None or high is None:
        return text
    text += f" [{_number(low, signed=True)}, {_number(high, signed=True)}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def _best_baseline(
    cells: Mapping[tuple, Mapping[str, Any]],
    learned: list[str],
    baselines: list[str],
    group: str,
    metric: str,
    k: int,
) -> str:
    """The baseline the deltas of this column are taken against (as recorded in the rows),
    with its value; else the best baseline by value."""
    names = {
        row.get("best_baseline")
        for m in learned
        if (row := cells.get((m, group, metric, k))) is not None
    } - {None}
    if len(names) == 1:
        name = names.pop()
    else:
        scored = [
            (cells[(b, group, metric, k)]["value"], b)
            for b in baselines
            if (b, group, metric, k) in cells
        ]
        if not scored:
            return "-"
        name = max(scored, key=lambda pair: (pair[0], -baselines.index(pair[1])))[1]
    row = cells.get((name, group, metric, k))
    return f"{name} {_number(row['value'])}" if row else name


def section(text: str) -> str:
    """The README text strictly between the markers, without surrounding blank lines."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ReadmeError(f"README lacks the markers {START} ... {END}")
    return text[start + len(START) : end].strip("\n")


def replace_section(text: str, body: str) -> str:
    """``text`` with the part between the markers replaced by ``body``."""
    section(text)  # checks the markers
    start, end = text.find(START) + len(START), text.find(END)
    return text[:start] + "\n" + body + "\n" + text[end:]


def check_text(readme_text: str, results: Mapping[str, Rows]) -> list[str]:
    """Differences (unified diff lines) between the README's section and ``render(results)``;
    empty when they agree."""
    current, expected = section(readme_text), render(results)
    if current == expected:
        return []
    return list(
        difflib.unified_diff(
            current.splitlines(),
            expected.splitlines(),
            "README.md (committed)",
            "rendered from docs/results",
            lineterm="",
        )
    )


def check(root: Path = ROOT) -> list[str]:
    """``check_text`` of ``root/README.md`` against ``root/docs/results/*.json``."""
    return check_text((root / README).read_text(), load_results(root / RESULTS_DIR))


def write(dataset: str, metrics_json: Path, root: Path = ROOT) -> Path:
    """Copy ``metrics_json`` to ``root/docs/results/<dataset>.json`` (one row a line) and
    rewrite the README section from every committed file; returns the copy's path."""
    if not dataset or not dataset.replace("_", "").replace("-", "").isalnum():
        raise ReadmeError(f"dataset name {dataset!r}: use letters, digits, - and _")
    rows = read_rows(metrics_json)
    target = root / RESULTS_DIR / f"{dataset}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n")
    readme = root / README
    readme.write_text(replace_section(readme.read_text(), render(load_results(target.parent))))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--write",
        nargs=2,
        metavar=("DATASET", "METRICS_JSON"),
        help="copy METRICS_JSON to docs/results/DATASET.json and rewrite the README section",
    )
    action.add_argument(
        "--check", action="store_true", help="exit 1 when the README section is out of date"
    )
    action.add_argument("--render", action="store_true", help="print the rendered section")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    try:
        if args.write:
            path = write(args.write[0], Path(args.write[1]), args.root)
            print(f"wrote {path} and the results section of {args.root / README}")
        elif args.render:
            print(render(load_results(args.root / RESULTS_DIR)))
        else:
            diff = check(args.root)
            if diff:
                print("\n".join(diff))
                print(
                    "README.md's results section differs from docs/results/*.json; run "
                    "python -m recsys.evaluation.readme --write DATASET METRICS_JSON "
                    "(or restore the section)",
                    file=sys.stderr,
                )
                return 1
            print("README.md's results section matches docs/results/*.json")
    except ReadmeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
