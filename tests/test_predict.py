"""fit → predict on the shared real BraTS samples (a checkpoint as the trainer writes it), and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import ExperimentConfig, load_config
from core.data.prepare import prepare
from core.data.preprocess import PreprocessParams
from core.errors import CheckpointError, DataError, UserError
from core.evaluation.cases import predict_case, predict_to_file
from core.model import build_networks
from core.trainer import fit

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/data/brats-samples"
CASES = {
    "2018": SAMPLES / "brats2018" / "Brats18_CBICA_ABM_1",
    "2023": SAMPLES / "brats2023" / "BraTS-GLI-00000-000",
}
FLAIR = {"2018": "Brats18_CBICA_ABM_1_flair.nii.gz", "2023": "BraTS-GLI-00000-000-t2f.nii.gz"}
ALL = ["flair", "t1", "t1c", "t2"]


def _config(modalities: list[str], **overrides: Any) -> ExperimentConfig:
    return load_config("smoke", overrides={"data.modalities": modalities, **overrides})


def make_checkpoint(path: Path, modalities: list[str], crop: list[int],
                    **extra: Any) -> dict[str, Any]:
    """A hand-made checkpoint dict, for the error paths that need a broken one."""
    cfg = _config(modalities)
    net = build_networks(len(modalities), cfg.model)
    save_checkpoint(path, {
        "config": cfg.to_dict(), "in_channels": len(modalities), "modalities": modalities,
        "preprocessing": {"crop": crop, "low_pct": 2.0, "high_pct": 98.0, **extra},
        "segmentor": net.segmentor.state_dict(), "critic": net.critic.state_dict(),
        "epoch": 0, "step": 0, "best_score": 0.0, "best_epoch": 0,
    })
    return load_checkpoint(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A checkpoint as ``core.trainer.fit`` writes it, trained on a store of the real samples.

    Crop 72×72×32: not a multiple of 16, so prediction must pad and strip.
    """
    if not SAMPLES.is_dir():
        pytest.skip(f"shared BraTS samples not found at {SAMPLES}")
    work = tmp_path_factory.mktemp("fit")
    prepare(SAMPLES, work / "s.zarr", PreprocessParams(crop=(72, 72, 32)), log=lambda _: None)
    cfg = _config(ALL, **{"data.store": str(work / "s.zarr"), "train.max_epochs": 1,
                          "train.max_steps": 2})
    result = fit(cfg, work / "trial")
    return result.best_path, load_checkpoint(result.best_path)


def test_fit_checkpoint_describes_itself(ckpt: tuple[Path, dict[str, Any]]) -> None:
    state = ckpt[1]
    assert state["preprocessing"]["crop"] == [72, 72, 32]
    assert state["store_id"] and state["eval_window"] == 160
    assert sum(state["store_splits"].values()) == 3


@pytest.fixture(autouse=True)
def _needs_samples() -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"shared BraTS samples not found at {SAMPLES}")


@pytest.mark.parametrize("release", ["2018", "2023"])
def test_predict_case_covers_the_whole_stored_crop(ckpt: tuple[Path, dict[str, Any]],
                                                    release: str) -> None:
    mask, prob, affine, header = predict_case(ckpt[1], CASES[release])
    ref = nib.load(str(CASES[release] / FLAIR[release]))
    assert mask.shape == prob.shape == (240, 240, 155) == ref.shape
    assert mask.dtype == np.uint8 and prob.dtype == np.float32
    assert set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(affine, ref.affine)
    # crop (72, 72, 32) centred: x, y in [84, 156), z in [61, 93); the whole of it is
    # predicted (padded to 80 for the network, padding stripped), zero outside
    inside = np.zeros(mask.shape, dtype=bool)
    inside[84:156, 84:156, 61:93] = True
    assert not mask[~inside].any() and not prob[~inside].any()
    assert prob[inside].min() > 0.0 and prob.max() <= 1.0
    np.testing.assert_array_equal(mask, (prob >= 0.5).astype(np.uint8))


def test_predict_to_file_writes_original_geometry(ckpt: tuple[Path, dict[str, Any]],
                                                  tmp_path: Path) -> None:
    out = tmp_path / "sub" / "mask.nii.gz"
    summary = predict_to_file(ckpt[1], CASES["2023"], out, save_prob=True)
    ref = nib.load(str(CASES["2023"] / FLAIR["2023"]))
    img, pimg = nib.load(str(out)), nib.load(summary["prob"])
    assert img.shape == ref.shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, ref.affine)
    assert img.header.get_zooms() == ref.header.get_zooms()
    assert int(np.asarray(img.dataobj).sum()) == summary["voxels"]
    assert pimg.get_data_dtype() == np.float32 and summary["prob"].endswith("mask_prob.nii.gz")
    assert sorted(p.name for p in out.parent.iterdir()) == ["mask.nii.gz", "mask_prob.nii.gz"]


def test_unimodal_model_with_explicit_file(tmp_path: Path) -> None:
    state = make_checkpoint(tmp_path / "t2.pt", ["t2"], [64, 64, 32])
    mask, _, _, _ = predict_case(state, {"t2": CASES["2018"] / "Brats18_CBICA_ABM_1_t2.nii.gz"})
    assert mask.shape == (240, 240, 155)


def test_missing_modalities_are_named(ckpt: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    case = tmp_path / "Brats18_Partial_1"
    case.mkdir()
    for m in ("flair", "t1"):
        shutil.copy(CASES["2018"] / f"Brats18_CBICA_ABM_1_{m}.nii.gz", case / f"{case.name}_{m}.nii.gz")
    with pytest.raises(DataError, match=r"Brats18_Partial_1: missing modalities .*t1c, t2"):
        predict_case(ckpt[1], case)
    with pytest.raises(DataError, match=r"missing modalities .*t1c, t2"):
        predict_case(ckpt[1], {"flair": case / f"{case.name}_flair.nii.gz"})


def test_unknown_preprocessing_key_is_refused(tmp_path: Path) -> None:
    state = make_checkpoint(tmp_path / "x.pt", ALL, [64, 64, 32], gamma=2.0)
    with pytest.raises(CheckpointError, match="gamma"):
        predict_case(state, CASES["2018"])
    del state["preprocessing"]
    with pytest.raises(CheckpointError, match="no 'preprocessing'"):
        predict_case(state, CASES["2018"])


def test_resolve_run_checkpoint_reads_tag(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from study.predict_cli import resolve_run_checkpoint

    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    client = MlflowClient(uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    with_tag = client.create_run(exp, tags={"best_checkpoint": "/abs/best.pt"}).info.run_id
    without = client.create_run(exp).info.run_id
    assert resolve_run_checkpoint(with_tag, uri) == Path("/abs/best.pt")
    with pytest.raises(CheckpointError, match=f"{without}.*best_checkpoint"):
        resolve_run_checkpoint(without, uri)
    with pytest.raises(UserError, match="nope.*not found"):
        resolve_run_checkpoint("nope", uri)


def test_cli_predict_batch_then_evaluate(ckpt: tuple[Path, dict[str, Any]], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import run_study

    out = tmp_path / "masks"
    rc = run_study.main(["predict", "--checkpoint", str(ckpt[0]), "--input",
                         str(SAMPLES / "brats2018"), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "Brats18_2013_11_1.nii.gz", "Brats18_CBICA_ABM_1.nii.gz"]
    assert "[2/2] Brats18_CBICA_ABM_1" in capsys.readouterr().err
    rc = run_study.main(["evaluate", "--pred", str(out), "--truth", str(SAMPLES / "brats2018"),
                         "--region", "wt", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["case_id"] for r in result["cases"]] == ["Brats18_2013_11_1", "Brats18_CBICA_ABM_1"]
    assert result["summary"]["dice"]["n"] == 2 and result["truth_only"] == []
    # a user error is one line on stderr and exit code 2
    rc = run_study.main(["predict", "--checkpoint", str(ckpt[0]), "--input",
                         str(SAMPLES / "brats2018"), "--out", str(tmp_path / "one.nii.gz")])
    assert rc == 2 and "must be a folder" in capsys.readouterr().err


def _study_with_cell(study: Path, checkpoint: Path) -> tuple[str, str, str]:
    """A study folder as a run leaves it: study.json, trials/<id>/cell.json + best.pt, and the
    cell's MLflow run (SQLite in the folder). Returns (tracking URI, cell name, run id)."""
    from mlflow.tracking import MlflowClient

    trial = study / "trials" / "0123456789ab"
    trial.mkdir(parents=True)
    shutil.copy(checkpoint, trial / "best.pt")
    name = "models/segan-cat/flair+t1+t1c+t2/wt/seed0"
    (trial / "cell.json").write_text(json.dumps(
        {"name": name, "trial_id": "0123456789ab", "kind": "train", "config": {}}))
    uri = f"sqlite:///{(study / 'mlflow.db').as_posix()}"
    client = MlflowClient(uri)
    exp = client.create_experiment("study-x", artifact_location=(study / "art").as_uri())
    run = client.create_run(exp, tags={"role": "trial", "trial_id": "0123456789ab",
                                       "best_checkpoint": str(trial / "best.pt")})
    (study / "study.json").write_text(json.dumps({"tracking_uri": uri, "experiment": "study-x"}))
    return uri, name, run.info.run_id


def test_predict_and_evaluate_find_runs_through_the_study_or_the_environment(
        ckpt: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    import run_study

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = tmp_path / "study"
    uri, name, run_id = _study_with_cell(study, ckpt[0])
    case = ["--input", str(CASES["2018"]), "--device", "cpu"]
    ways = {"cell": ["--study", str(study), "--cell", name],
            "cell_part": ["--study", str(study), "--cell", "flair+t1+t1c+t2"],
            "run_study": ["--study", str(study), "--run-id", run_id]}
    for way, args in ways.items():
        assert run_study.main(["predict", *args, *case, "--out", str(tmp_path / f"{way}.nii.gz")]) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert run_study.main(["predict", "--run-id", run_id, *case, "--out", str(tmp_path / "env.nii.gz")]) == 0
    masks = [np.asarray(nib.load(str(tmp_path / f"{w}.nii.gz")).dataobj) for w in [*ways, "env"]]
    for mask in masks[1:]:
        np.testing.assert_array_equal(mask, masks[0])
    capsys.readouterr()
    # evaluate records its result in the cell's run
    truth = CASES["2018"] / "Brats18_CBICA_ABM_1_seg.nii.gz"
    assert run_study.main(["evaluate", "--pred", str(tmp_path / "cell.nii.gz"), "--truth",
                           str(truth), "--json", "--study", str(study), "--cell", name]) == 0
    result = json.loads(capsys.readouterr().out)
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.metrics["original_grid/wt/dice"] == pytest.approx(result["dice"])
    assert "original_grid/wt.json" in {a.path for a in MlflowClient(uri).list_artifacts(
        run_id, "original_grid")}
    # no store named anywhere, a cell without its study, a study without a run: one line each
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    errors = {"which MLflow store": ["predict", "--run-id", run_id, *case, "--out", "x.nii.gz"],
              "--cell needs --study": ["predict", "--cell", name, *case, "--out", "x.nii.gz"],
              "add --run-id RUN or --cell NAME": ["evaluate", "--pred", str(truth), "--truth",
                                                 str(truth), "--study", str(study)],
              "no cell named 'models/nope'": ["predict", "--study", str(study), "--cell",
                                              "models/nope", *case, "--out", "x.nii.gz"]}
    for message, argv in errors.items():
        assert run_study.main(argv) == 2
        assert message in capsys.readouterr().err
