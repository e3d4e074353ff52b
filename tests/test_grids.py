"""Grids as data: every grid expands; identities are stable; bad values fail early."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import run_study
from core.data.store import BratsStore
from core.errors import ConfigError, UserError
from study.grids import ExpandContext, expand, list_grids
from study.runner import decide_gpus

CTX = ExpandContext("smoke", "/abs/store.zarr", "store123", (0,))


@pytest.mark.parametrize("name", list_grids())
def test_every_grid_expands_with_dependencies_in_earlier_stages(name):
    grid = expand(name, CTX)
    assert grid.trials
    stage_of = {t.trial_id: t.stage for t in grid.trials}
    for t in grid.trials:
        if t.depends_on:
            assert stage_of[t.depends_on] < t.stage
    assert len({t.trial_id for t in grid.trials}) == len(grid.trials)


def test_transfer_all_covers_the_paper_and_every_pair():
    grid = expand("transfer_all", CTX)
    kinds = [t.kind for t in grid.trials]
    assert kinds.count("evaluate") == 4
    transfers = [t for t in grid.trials if t.kind == "transfer" and t.depends_on]
    assert len(transfers) == 4 * 3 * 4  # sources × other targets × strategies
    assert {(t.tags["source"], t.tags["target"]) for t in transfers} == {
        (s, d) for s in ("flair", "t1", "t1c", "t2") for d in ("flair", "t1", "t1c", "t2") if s != d}
    scratch = [t for t in grid.trials if t.tags.get("freeze") == "scratch" and t.kind == "transfer"]
    assert len(scratch) == 4 and all(t.stage == 1 for t in scratch)
    table1 = {t.tags["variant"] for t in grid.trials if t.family == "table1"}
    assert table1 == {"segan", "segan-dice", "segan-cat"}
    # transfers use the transfer epoch budget, sources the normal one
    src = next(t for t in grid.trials if t.family == "unimodal")
    assert transfers[0].config["train"]["max_epochs"] == src.config["transfer"]["max_epochs"]


def test_identity_is_stable_and_follows_the_config():
    a = expand("smoke", CTX)
    b = expand("smoke", CTX)
    assert [t.trial_id for t in a.trials] == [t.trial_id for t in b.trials]
    moved = expand("smoke", ExpandContext("smoke", "/elsewhere/store.zarr", "store123", (0,)))
    assert [t.trial_id for t in moved.trials] == [t.trial_id for t in a.trials]  # path is not identity
    other_store = expand("smoke", ExpandContext("smoke", "/abs/store.zarr", "store999", (0,)))
    assert not {t.trial_id for t in other_store.trials} & {t.trial_id for t in a.trials}
    seeds = expand("smoke", ExpandContext("smoke", "/abs/store.zarr", "store123", (0, 1)))
    assert len(seeds.trials) == 2 * len(a.trials)
    changed = expand("smoke", ExpandContext("smoke", "/abs/store.zarr", "store123", (0,),
                                            extra_overrides={"train.max_epochs": 5}))
    assert not {t.trial_id for t in changed.trials} & {t.trial_id for t in a.trials}
    # how a cell runs is not what it is: execution settings leave its identity alone
    run_differently = expand("smoke", ExpandContext(
        "smoke", "/abs/store.zarr", "store123", (0,),
        extra_overrides={"data.shared_cache": False, "train.compile": True, "data.num_workers": 2}))
    assert [t.trial_id for t in run_differently.trials] == [t.trial_id for t in a.trials]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("freeze: [full, s_dim]", "unknown value 's_dim' (did you mean 's_din'?)"),
        ("target: [t1ce]", "unknown value 't1ce'"),
        ("colour: [red]", "unknown axis 'colour'"),
    ],
)
def test_bad_axis_values_fail_before_anything_starts(tmp_path: Path, body, message):
    grid = tmp_path / "bad.yaml"
    grid.write_text(
        "families:\n  unimodal:\n    kind: train\n    axes:\n      modalities: [flair]\n"
        "  transfer:\n    kind: transfer\n    source_family: unimodal\n    axes:\n"
        f"      source: [flair]\n      target: [t1]\n      {body}\n"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand(str(grid), CTX)


def test_cli_dry_run_and_unknown_grid(capsys, synthetic_store):
    assert run_study.main(["--grid", "transfer_flair", "--dry-run", "--data", str(synthetic_store)]) == 0
    out = capsys.readouterr().out
    assert "stage 2 (9 trials)" in out and "<- unimodal/segan-cat/flair" in out
    assert "budget: demo (auto: synthetic store" in out
    real_ids = {t.trial_id for t in expand("transfer_flair", ExpandContext(
        "demo", str(synthetic_store), BratsStore(synthetic_store).manifest["store_id"], (0,))).trials}
    assert all(tid in out for tid in real_ids)  # the dry run names the cells the run will run
    assert run_study.main(["--grid", "transfer_al", "--dry-run"]) == 2
    assert "did you mean 'transfer_all'" in capsys.readouterr().err
    assert run_study.main(["--grid", "smoke", "--dry-run", "--set", "optim.lr=1"]) == 2
    assert "unknown config key 'optim.lr'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("requested", "cluster", "expected"),
    [(None, 0, 0.0), (None, 2, 1.0), (0.5, 1, 0.5), (0, 4, 0.0)],
)
def test_gpu_share_defaults(requested, cluster, expected):
    assert decide_gpus(requested, cluster) == expected


def test_never_request_a_gpu_the_cluster_lacks():
    with pytest.raises(UserError, match="no GPU"):
        decide_gpus(1, 0)
    with pytest.raises(UserError, match="exceeds"):
        decide_gpus(3, 2)


def test_paper_budget_runs_three_seeds_unless_told():
    from study.grids import grid_seeds, load_grid_data

    data = load_grid_data("transfer_all")
    assert grid_seeds(data, "paper") == (0, 1, 2)
    assert grid_seeds(data, "cpu") == (0,)


def test_a_crop_larger_than_the_store_fails_before_anything_starts(synthetic_store, tmp_path, capsys):
    study_dir = tmp_path / "never"
    rc = run_study.main(["--grid", "smoke", "--data", str(synthetic_store), "--study-dir", str(study_dir),
                         "--set", "data.train_crop=96"])
    assert rc == 2
    assert "data.train_crop 96 does not fit the store's 80x80 slices" in capsys.readouterr().err
    assert not study_dir.exists()


def test_describe_model_prints_reference_counts(capsys):
    assert run_study.main(["describe-model", "--variant", "segan-cat"]) == 0
    out = capsys.readouterr().out
    assert "4,308,225" in out and "661,312" in out
    assert run_study.main(["describe-model", "--variant", "segan", "--modalities", "flair"]) == 0
    assert "critic input multiply" in capsys.readouterr().out
    assert run_study.main(["describe-model", "--variant", "segan-xl"]) == 2


def test_a_gpu_request_without_gpus_fails_before_logging(synthetic_store, tmp_path, ray_session, capsys):
    if ray_session.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this machine has GPUs")
    study_dir = tmp_path / "never"
    rc = run_study.main(["--grid", "smoke", "--data", str(synthetic_store), "--study-dir", str(study_dir),
                         "--gpus-per-trial", "1"])
    assert rc == 2
    assert "the Ray cluster has no GPU" in capsys.readouterr().err
    assert not study_dir.exists()


@pytest.mark.parametrize(("space", "message"), [
    ("optim.lr: {type: uniform, low: 0.1, high: 0.2}", "search.space.optim.lr: unknown config key 'optim.lr'"),
    ("optim.lr_s: {type: uniform, low: -1, high: 0.2}", "search.space.optim.lr_s: optim.lr_s: must be > 0"),
    ("loss.l1_mode: {type: choice, values: [global, mean]}", "search.space.loss.l1_mode: loss.l1_mode: must be"),
    ("optim.lr_s: {type: normal, low: 0.1, high: 0.2}", "search.space.optim.lr_s.type: unknown 'normal'"),
])
def test_hpo_space_is_checked_before_anything_starts(tmp_path, space, message, capsys,
                                                     synthetic_store):
    from study.hpo import check_space

    grid_file = tmp_path / "search.yaml"
    grid_file.write_text("budget: smoke\nfamilies:\n  hpo:\n    kind: train\n    axes:\n"
                         "      modalities: [flair]\nsearch:\n  space:\n    " + space + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_space(expand(str(grid_file), CTX))
    study_dir = tmp_path / "never"
    assert run_study.main(["--grid", str(grid_file), "--study-dir", str(study_dir),
                           "--data", str(synthetic_store)]) == 2
    assert message in capsys.readouterr().err and not study_dir.exists()


def test_a_bad_fault_drill_epoch_is_one_line(capsys):
    assert run_study.main(["--grid", "smoke", "--inject-failure", "flair@two", "--dry-run"]) == 2
    assert "--inject-failure 'flair@two': the part after @ must be an epoch number" in capsys.readouterr().err
