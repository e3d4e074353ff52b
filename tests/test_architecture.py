"""Layout rules: core/ is pure PyTorch + numpy; Ray, MLflow and Optuna live in study/ only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("ray", "mlflow", "optuna", "study")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((REPO / "core").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_core_imports_no_cluster_or_tracking_code(path):
    assert not _imports(path) & set(FORBIDDEN_IN_CORE)


def test_files_stay_short():
    files = [p for package in ("core", "study") for p in (REPO / package).rglob("*.py")]
    long = [str(p.relative_to(REPO)) for p in files if len(p.read_text().splitlines()) > 450]
    assert not long, f"split these files: {long}"
