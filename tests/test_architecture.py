"""Layout rules (ARCHITECTURE.md): core/ is pure PyTorch + numpy; Ray, MLflow and Optuna
live in study/ only, each behind its own module; the vocabulary is defined once; study/
has no import cycle; files stay short."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("ray", "mlflow", "optuna", "study")
# external system -> the study modules allowed to import it
ADAPTERS = {
    "ray": {"ray_cluster", "runner", "scheduling", "trainable", "callbacks", "hpo"},
    "mlflow": {"tracking", "tracking_ops", "tracking_store", "report_stats", "predict_cli", "mlflow_meta", "mlflow_results"},
    "optuna": {"hpo"},
}
PY = sorted(p for package in ("core", "study") for p in (REPO / package).rglob("*.py"))


def _imports(path: Path, top_only: bool = True) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name if not top_only else alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module if not top_only else node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((REPO / "core").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_core_imports_no_cluster_or_tracking_code(path):
    assert not _imports(path) & set(FORBIDDEN_IN_CORE)


@pytest.mark.parametrize("system", sorted(ADAPTERS))
def test_each_external_system_has_its_adapters_only(system):
    users = {p.stem for p in (REPO / "study").glob("*.py") if system in _imports(p)}
    assert users <= ADAPTERS[system], f"{system} imported outside its adapters: {users - ADAPTERS[system]}"


def test_study_has_no_import_cycle():
    modules = {p.stem: p for p in (REPO / "study").glob("*.py")}
    graph = {name: {m.split(".")[1] for m in _imports(path, top_only=False)
                    if m.startswith("study.") and m.split(".")[1] in modules}
             for name, path in modules.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or reaches(nxt, goal, seen | {nxt}) for nxt in graph[start] - seen)

    cycles = [name for name in graph if reaches(name, name, set())]
    assert not cycles, f"import cycles through {cycles}"


VOCABULARY = {  # a tuple literal of these names may appear in core/vocabulary.py only
    "modalities": re.compile(r"\(\s*\"flair\",\s*\"t1\",\s*\"t1c\",\s*\"t2\"\s*\)"),
    "regions": re.compile(r"\(\s*\"wt\",\s*\"tc\",\s*\"et\"\s*\)"),
    "metrics": re.compile(r"\(\s*\"dice\",\s*\"precision\",\s*\"sensitivity\""),
}


@pytest.mark.parametrize("fact", sorted(VOCABULARY))
def test_vocabulary_is_defined_once(fact):
    where = [str(p.relative_to(REPO)) for p in PY if VOCABULARY[fact].search(p.read_text())]
    assert where == ["core/vocabulary.py"], where


def test_nothing_below_the_cli_takes_an_argparse_namespace():
    cli = {"cli", "predict_cli", "commands", "main"}
    users = [str(p.relative_to(REPO)) for p in PY
             if p.stem not in cli and "argparse.Namespace" in p.read_text()]
    assert not users, users


def test_files_stay_short():
    long = [str(p.relative_to(REPO)) for p in PY if len(p.read_text().splitlines()) > 400]
    assert not long, f"split these files: {long}"


def test_the_study_driver_starts_ray_before_it_imports_torch():
    """Everything the driver runs before Ray starts (CLI, grid, config, session) stays free
    of torch and scipy: their ~1.5 s of imports then overlap Ray's start (study.session)."""
    import subprocess
    import sys

    code = ("import sys; import run_study, study.main, study.session, study.grids; "
            "print(sorted(m for m in ('torch', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out
