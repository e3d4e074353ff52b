"""`export` on a tiny real study (tests/tiny_study.py): the zip and the folder hold the
checkpoint and a model card, the exported best.pt predicts the same mask as the study's
checkpoint, and the export is in the cell's MLflow run as artifacts and a loadable model."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import run_study
from tests.tiny_study import TinyStudy, build_tiny_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    return build_tiny_study(tmp_path_factory.mktemp("tiny"))


def _mask(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_export_zip_predicts_the_study_checkpoints_mask(tiny: TinyStudy, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "flair.zip"
    rc = run_study.main(["export", "--study", str(tiny.study_dir), "--cell", tiny.cell,
                         "--out", str(out), "--no-mlflow-log"])
    assert rc == 0, capsys.readouterr().err
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["best.pt", "model_card.json", "model_card.md"]
        zf.extractall(tmp_path / "unzipped")
    exported = tmp_path / "unzipped" / "best.pt"
    assert exported.read_bytes() == tiny.checkpoint.read_bytes()
    masks = {}
    for how, args in (("study", ["--study", str(tiny.study_dir), "--cell", tiny.cell]),
                      ("export", ["--checkpoint", str(exported)])):
        masks[how] = tmp_path / f"{how}.nii.gz"
        assert run_study.main(["predict", *args, "--input", str(tiny.case), "--out",
                               str(masks[how]), "--device", "cpu"]) == 0
    ref = nib.load(str(next(tiny.case.glob("*_flair.nii.gz"))))
    assert _mask(masks["export"]).shape == ref.shape
    np.testing.assert_array_equal(_mask(masks["export"]), _mask(masks["study"]))


def test_model_card_describes_inputs_data_metrics_and_use(tiny: TinyStudy, tmp_path: Path) -> None:
    out = tmp_path / "folder"
    assert run_study.main(["export", "--study", str(tiny.study_dir), "--cell", "flair",
                           "--out", str(out), "--no-mlflow-log"]) == 0
    text = (out / "model_card.json").read_text()
    card = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the card"))
    assert card["cell"]["name"] == tiny.cell and card["cell"]["run_id"] == tiny.run_id
    assert card["inputs"]["modalities"] == ["flair"]
    assert card["inputs"]["channel_order"] == ["channel 0: FLAIR (flair)"]
    prep = card["preprocessing"]
    assert prep["crop"] == [32, 32, 16] and prep["clip_percentiles"] == [2.0, 98.0]
    assert "[0, 1]" in prep["scaling"]
    train = card["training"]
    assert train["store_id"] and train["split_sizes"]["test"] >= 1
    assert sum(train["split_sizes"].values()) == 6
    dice = card["metrics"]["evaluation"]["test/flair"]["dice"]
    assert dice["ci_low"] <= dice["mean"] <= dice["ci_high"] and dice["n_volumes"] >= 1
    assert card["code_version"] and "BraTS" in card["licence"]
    assert card["usage"]["predict"].startswith("python run_study.py predict --checkpoint best.pt")
    assert card["checkpoint"]["sha256"] and card["checkpoint"]["file"] == "best.pt"
    md = (out / "model_card.md").read_text()
    for needle in ("## Inputs (in this order)", "channel 0: FLAIR", "crop 32×32×16",
                   "## Licence", "run_study.py predict --checkpoint best.pt", "test/flair"):
        assert needle in md
    # an existing --out is refused unless --force
    assert run_study.main(["export", "--study", str(tiny.study_dir), "--cell", "flair",
                           "--out", str(out), "--no-mlflow-log"]) == 2
    assert run_study.main(["export", "--study", str(tiny.study_dir), "--cell", "flair",
                           "--out", str(out), "--no-mlflow-log", "--force"]) == 0


def test_export_is_logged_to_the_cells_run_as_artifacts_and_a_model(tiny: TinyStudy,
                                                                    tmp_path: Path) -> None:
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    from core.checkpoint import build_segmentor, load_checkpoint

    client = MlflowClient(tiny.tracking_uri)
    before = client.get_run(tiny.run_id).info
    assert run_study.main(["export", "--study", str(tiny.study_dir), "--best",
                           "--out", str(tmp_path / "best"), "--register", "tiny-flair"]) == 0
    run = client.get_run(tiny.run_id)
    assert (run.info.status, run.info.end_time) == (before.status, before.end_time)
    listed = {a.path for a in client.list_artifacts(tiny.run_id, "export")}
    assert listed == {"export/best.pt", "export/model_card.json", "export/model_card.md"}
    model_uri = run.data.tags["exported_model"]
    models = client.search_logged_models([run.info.experiment_id])
    assert [(m.source_run_id, m.name) for m in models] == [(tiny.run_id, "segmentor")]
    (version,) = client.search_model_versions("name = 'tiny-flair'")
    assert version.run_id == tiny.run_id
    mlflow.set_tracking_uri(tiny.tracking_uri)
    loaded = mlflow.pytorch.load_model(model_uri).eval()
    reference, _ = build_segmentor(load_checkpoint(tiny.checkpoint))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x))


def test_cell_names_are_checked(tiny: TinyStudy, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run_study.main(["export", "--study", str(tiny.study_dir), "--cell", "unimodal/flir",
                         "--out", "x.zip", "--no-mlflow-log"])
    assert rc == 2 and "no cell named 'unimodal/flir'" in capsys.readouterr().err
