"""Expand a grid file (``configs/grids/*.yaml``) into trial specs.

A grid is data: families of cells, each family a kind (``train``, ``transfer``
or ``evaluate``) and axes whose cartesian product gives its cells, times the
grid's seeds. A trial's identity is a hash of its fully resolved config (with
the store named by its id and a transfer source by its trial id), so the same
cell is recognised across runs and never duplicated.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import CONFIG_DIR, EXECUTION_KEYS, ExperimentConfig, load_config
from core.errors import ConfigError
from core.freezing import STRATEGIES
from core.nested import read_yaml
from core.vocabulary import MODALITIES, REGIONS, VARIANTS

GRID_DIR = CONFIG_DIR / "grids"
KINDS = ("train", "transfer", "evaluate")
AXES: dict[str, tuple[str, ...]] = {
    "train": ("variant", "modalities", "region"),
    "transfer": ("variant", "source", "target", "freeze", "region"),
    "evaluate": (),
}
GRID_KEYS = ("description", "budget", "seeds", "seeds_by_budget", "include", "families",
             "search")
FAMILY_KEYS = ("kind", "axes", "overrides", "source_family", "eval_modalities")
SOURCE_PLACEHOLDER = "trial:"


@dataclass(frozen=True)
class TrialSpec:
    trial_id: str
    """Hash of the resolved config: the cell's identity across runs."""
    name: str
    """Readable: family/axis values/seed."""
    family: str
    kind: str
    stage: int
    config: dict[str, Any]
    """Resolved ExperimentConfig as a dict; a transfer source is ``trial:<id>`` until it ran."""
    tags: dict[str, str]
    eval_modalities: tuple[str, ...]
    depends_on: str | None = None
    """trial_id of the source trial, if any."""


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    budget: str
    trials: list[TrialSpec]
    search: dict[str, Any] = field(default_factory=dict)

    def stages(self) -> list[list[TrialSpec]]:
        n = max((t.stage for t in self.trials), default=0)
        return [[t for t in self.trials if t.stage == s] for s in range(1, n + 1)]

    def by_id(self) -> dict[str, TrialSpec]:
        return {t.trial_id: t for t in self.trials}


def list_grids() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def grid_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = GRID_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown grid {name!r}{_close(name, list_grids())}; valid: {', '.join(list_grids())}")
    return path


def _close(name: str, options: Sequence[str]) -> str:
    import difflib

    m = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean {m[0]!r}?)" if m else ""


def load_grid_data(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The grid file with ``include``d grids' families merged in (the file wins)."""
    if name in _seen:
        raise ConfigError(f"grid include cycle: {' -> '.join((*_seen, name))}")
    path = grid_path(name)
    data = read_yaml(path)
    for key in data:
        if key not in GRID_KEYS:
            raise ConfigError(f"{path.name}: unknown grid key {key!r}{_close(key, GRID_KEYS)}")
    families: dict[str, Any] = {}
    for inc in data.get("include", []) or []:
        families.update(load_grid_data(inc, (*_seen, name)).get("families", {}))
    families.update(data.get("families", {}) or {})
    return {**data, "families": families, "name": path.stem}


def grid_seeds(data: Mapping[str, Any], budget: str) -> tuple[int, ...]:
    """The grid's seeds for a budget: ``seeds_by_budget[budget]`` if given, else ``seeds``."""
    by_budget = data.get("seeds_by_budget") or {}
    seeds = by_budget.get(budget, data.get("seeds") or [0])
    try:
        return tuple(int(s) for s in seeds)
    except (TypeError, ValueError):
        raise ConfigError(f"grid {data.get('name')}: seeds must be integers, got {seeds!r}") from None


def _as_modalities(value: Any, where: str) -> tuple[str, ...]:
    mods = tuple(m.strip() for m in value.split(",")) if isinstance(value, str) else tuple(value)
    for m in mods:
        if m not in MODALITIES:
            raise ConfigError(f"{where}: unknown modality {m!r}{_close(m, MODALITIES)}; valid: {', '.join(MODALITIES)}")
    return mods


def _check_axis_values(family: str, axis: str, values: list[Any]) -> None:
    valid: dict[str, Sequence[str]] = {
        "variant": list(VARIANTS), "freeze": list(STRATEGIES), "region": REGIONS,
        "source": MODALITIES, "target": MODALITIES,
    }
    where = f"families.{family}.axes.{axis}"
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: expected a non-empty list")
    if axis == "modalities":
        for v in values:
            _as_modalities(v, where)
        return
    for v in values:
        if str(v) not in valid[axis]:
            raise ConfigError(f"{where}: unknown value {v!r}{_close(str(v), valid[axis])}; "
                              f"valid: {', '.join(valid[axis])}")


def trial_hash(kind: str, config: Mapping[str, Any], eval_modalities: Sequence[str], store_id: str) -> str:
    """The cell's identity: its resolved config without the execution settings
    (``EXECUTION_KEYS``), the store by content id, its kind and evaluation sets."""
    ident = json.loads(json.dumps(config))
    ident["data"]["store"] = f"store:{store_id}"
    for key in EXECUTION_KEYS:
        section, name = key.split(".")
        ident.get(section, {}).pop(name, None)
    blob = json.dumps({"kind": kind, "config": ident, "eval": list(eval_modalities)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ExpandContext:
    budget: str
    store: str
    store_id: str
    seeds: tuple[int, ...]
    overlays: tuple[Path, ...] = ()
    extra_overrides: Mapping[str, Any] = field(default_factory=dict)


def _resolve(ctx: ExpandContext, overrides: Mapping[str, Any]) -> ExperimentConfig:
    return load_config(ctx.budget, ctx.overlays, {**overrides, **ctx.extra_overrides, "data.store": ctx.store})


def expand(name: str, ctx: ExpandContext) -> Grid:
    """All trial specs of grid ``name``; fails on any unknown key or axis value."""
    data = load_grid_data(name)
    trials: dict[str, TrialSpec] = {}
    families = data["families"]
    order = sorted(families, key=lambda f: families[f].get("kind") != "train")  # sources first
    for fam in order:
        for spec in _expand_family(fam, families[fam], ctx, trials):
            trials.setdefault(spec.trial_id, spec)
    return Grid(data["name"], str(data.get("description", "")).strip(), ctx.budget,
                list(trials.values()), data.get("search", {}) or {})


def _expand_family(fam: str, body: Mapping[str, Any], ctx: ExpandContext,
                   known: dict[str, TrialSpec]) -> list[TrialSpec]:
    for key in body:
        if key not in FAMILY_KEYS:
            raise ConfigError(f"families.{fam}: unknown key {key!r}{_close(key, FAMILY_KEYS)}")
    kind = body.get("kind", "train")
    if kind not in KINDS:
        raise ConfigError(f"families.{fam}.kind: unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    axes: dict[str, list[Any]] = dict(body.get("axes", {}) or {})
    for axis, values in axes.items():
        if axis not in AXES[kind]:
            raise ConfigError(f"families.{fam}.axes: unknown axis {axis!r} for kind {kind}"
                              f"{_close(axis, AXES[kind])}; valid: {', '.join(AXES[kind]) or 'none'}")
        _check_axis_values(fam, axis, values)
    fixed = dict(body.get("overrides", {}) or {})
    if kind == "evaluate":
        return _expand_evaluate(fam, body, ctx, known)
    out = []
    names = list(axes)
    for combo in itertools.product(*(axes[a] for a in names)):
        cell = dict(zip(names, combo, strict=True))
        for seed in ctx.seeds:
            spec = (_train_cell if kind == "train" else _transfer_cell)(fam, body, cell, seed, fixed, ctx, known)
            if spec is not None:
                out.append(spec)
    return out


def _cell_overrides(cell: Mapping[str, Any], seed: int, fixed: Mapping[str, Any]) -> dict[str, Any]:
    # a family's own overrides are more specific than its variant's defaults: they win
    o: dict[str, Any] = dict(VARIANTS[cell.get("variant", "segan-cat")])
    o.update(fixed)
    o["train.seed"] = seed
    if "region" in cell:
        o["data.region"] = cell["region"]
    return o


def _tags(fam: str, kind: str, cfg: ExperimentConfig, cell: Mapping[str, Any], seed: int) -> dict[str, str]:
    return {"family": fam, "kind": kind, "variant": str(cell.get("variant", "segan-cat")),
            "modalities": ",".join(cfg.data.modalities), "region": cfg.data.region,
            "seed": str(seed), "freeze": cfg.transfer.freeze}


def _train_cell(fam, body, cell, seed, fixed, ctx, known) -> TrialSpec:  # type: ignore[no-untyped-def]
    o = _cell_overrides(cell, seed, fixed)
    mods = _as_modalities(cell.get("modalities", ",".join(MODALITIES)), f"families.{fam}")
    o["data.modalities"] = list(mods)
    cfg = _resolve(ctx, o)
    evals = _eval_list(body, fam, default=(",".join(mods),))
    config = cfg.to_dict()
    tid = trial_hash("train", config, evals, ctx.store_id)
    name = f"{fam}/{cell.get('variant', 'segan-cat')}/{'+'.join(mods)}/{cfg.data.region}/seed{seed}"
    return TrialSpec(tid, name, fam, "train", 1, config, _tags(fam, "train", cfg, cell, seed), evals)


def _find_source(known: Mapping[str, TrialSpec], family: str, modalities: tuple[str, ...],
                 variant: str, region: str, seed: int, where: str) -> TrialSpec:
    for t in known.values():
        if (t.family == family and t.kind == "train" and t.tags["modalities"] == ",".join(modalities)
                and t.tags["variant"] == variant and t.tags["region"] == region and t.tags["seed"] == str(seed)):
            return t
    raise ConfigError(f"{where}: no source trial in family {family!r} with modalities "
                      f"{','.join(modalities)}, variant {variant}, region {region}, seed {seed}")


def _transfer_cell(fam, body, cell, seed, fixed, ctx, known) -> TrialSpec | None:  # type: ignore[no-untyped-def]
    source_mod, target = cell.get("source"), cell.get("target")
    freeze = cell.get("freeze", "full")
    if target is None or (freeze != "scratch" and source_mod is None):
        raise ConfigError(f"families.{fam}: transfer families need axes 'source' and 'target'")
    if source_mod == target:
        return None
    o = _cell_overrides(cell, seed, fixed)
    o["data.modalities"] = [target]
    base = _resolve(ctx, o)  # freeze not set yet: it needs a source
    o["train.max_epochs"] = base.transfer.max_epochs
    if base.transfer.max_seconds:
        o["train.max_seconds"] = base.transfer.max_seconds
    o["transfer.freeze"] = freeze
    src = None
    if freeze != "scratch":
        source_family = body.get("source_family") or ""
        src = _find_source(known, source_family, (source_mod,), str(cell.get("variant", "segan-cat")),
                           base.data.region, seed, f"families.{fam}")
        o["transfer.source"] = SOURCE_PLACEHOLDER + src.trial_id
    cfg = _resolve(ctx, o)
    evals = _eval_list(body, fam, default=(target,))
    config = cfg.to_dict()
    tid = trial_hash("transfer", config, evals, ctx.store_id)
    tags = _tags(fam, "transfer", cfg, cell, seed)
    tags.update(target=target, source=source_mod if src else "none")
    if src:
        tags["source_trial"] = src.trial_id
    src_name = f"{source_mod}->" if src else "scratch->"
    name = f"{fam}/{src_name}{target}/{freeze}/{cfg.data.region}/seed{seed}"
    return TrialSpec(tid, name, fam, "transfer", 2 if src else 1, config, tags, evals,
                     src.trial_id if src else None)


def _eval_list(body: Mapping[str, Any], fam: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = body.get("eval_modalities")
    if raw is None:
        return default
    if not isinstance(raw, list):
        raise ConfigError(f"families.{fam}.eval_modalities: expected a list")
    return tuple(",".join(_as_modalities(v, f"families.{fam}.eval_modalities")) for v in raw)


def _expand_evaluate(fam: str, body: Mapping[str, Any], ctx: ExpandContext,
                     known: dict[str, TrialSpec]) -> list[TrialSpec]:
    source_family = body.get("source_family")
    sources = [t for t in known.values() if t.family == source_family and t.kind == "train"]
    if not sources:
        raise ConfigError(f"families.{fam}.source_family: no trials in family {source_family!r}")
    evals = _eval_list(body, fam, default=MODALITIES)
    out = []
    for src in sources:
        config = json.loads(json.dumps(src.config))
        config["transfer"]["source"] = SOURCE_PLACEHOLDER + src.trial_id
        tid = trial_hash("evaluate", config, evals, ctx.store_id)
        tags = {**src.tags, "family": fam, "kind": "evaluate", "source_trial": src.trial_id,
                "source": src.tags["modalities"]}
        out.append(TrialSpec(tid, f"{fam}/{src.name.split('/', 1)[1]}", fam, "evaluate", src.stage + 1,
                             config, tags, evals, src.trial_id))
    return out
