"""The import arrows the design document (architecture.md, "Arrows that must never exist")
forbids, checked on the source.

Every module under ``recsys/`` and ``feature_repo/`` is parsed with ``ast``; every import counts,
module-level or inside a function (a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# origin layer -> the layers (or module prefixes) it must never import
NEVER = {
    "warehouse": ("features", "online", "ranking", "models", "serving"),
    "features": ("ranking", "models", "serving"),
    "online": ("ranking", "models", "serving"),
    "ranking": ("evaluation", "serving"),
    "models": ("evaluation", "serving"),
    "evaluation": ("serving", "cli"),
    "feature_repo": ("models",),
}
# Model artefacts are open formats: nothing in recsys may unpickle.
PICKLERS = {"pickle", "_pickle", "cloudpickle", "dill", "joblib"}


def layer_of(path: Path) -> str:
    """``recsys/<layer>/...`` or ``recsys/<layer>.py``; ``feature_repo`` for the Feast repo."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return "feature_repo" if parts[0] == "feature_repo" else parts[1]


def imported(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, nested ones included.

    ``package`` is the importing module's package (for relative imports); ``from recsys import
    models`` counts as importing ``recsys.models``.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(source: str, origin: str, package: str, where: str) -> list[str]:
    """One line per import statement of ``source`` (layer ``origin``) that crosses a forbidden
    arrow, naming the module it imports."""
    crossing: dict[tuple[int, str], str] = {}
    for line, name in imported(source, package):
        parts = name.split(".")
        if parts[0] == "recsys" and len(parts) > 1 and parts[1] in NEVER.get(origin, ()):
            crossing.setdefault((line, parts[1]), name)
    return [f"{where}:{line}: {origin} -> {to} ({name})" for (line, to), name in crossing.items()]


def modules() -> list[Path]:
    return sorted([*(ROOT / "recsys").rglob("*.py"), *(ROOT / "feature_repo").glob("*.py")])


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).parent.parts)


def test_no_forbidden_import_arrows():
    found = []
    for path in modules():
        source = path.read_text()
        where = str(path.relative_to(ROOT))
        found += violations(source, layer_of(path), package_of(path), where)
    assert not found, "forbidden imports (see the design's 'Arrows that must never exist'):\n" + (
        "\n".join(found)
    )


def test_nothing_in_recsys_pickles():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in modules()
        if path.parts[len(ROOT.parts)] == "recsys"
        for line, name in imported(path.read_text(), package_of(path))
        if name.split(".")[0] in PICKLERS
    ]
    assert not found, "model artefacts are open formats, never pickles:\n" + "\n".join(found)


def test_the_checker_flags_bad_imports():
    lazy = "def load():\n    from recsys.features.read import OnlineReader\n"
    assert violations(lazy, "warehouse", "recsys.warehouse", "w.py") == [
        "w.py:2: warehouse -> features (recsys.features.read)"
    ]
    relative = "from ..serving import app\n"
    assert violations(relative, "ranking", "recsys.ranking", "r.py") == [
        "r.py:1: ranking -> serving (recsys.serving)"
    ]
    assert violations("from recsys import models\n", "feature_repo", "feature_repo", "f.py") == [
        "f.py:1: feature_repo -> models (recsys.models)"
    ]
    assert violations("import recsys.cli\n", "evaluation", "recsys.evaluation", "e.py")
    assert not violations("from recsys.warehouse import connect\n", "features", "x", "ok.py")
    assert [n for _, n in imported("import joblib\n", "recsys")] == ["joblib"]
