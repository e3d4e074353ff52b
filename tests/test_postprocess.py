"""Post-processing: the largest component on hand-made volumes, the choice on validation,
and the same rule in the study's evaluation and in ``predict``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from core.config import load_config
from core.errors import ConfigError
from core.evaluation.cases import predict_case
from core.evaluation.volumes import checkpoint_postprocessing
from core.postprocess import largest_component, postprocess
from core.training_data import TrainData
from core.validation import validate
from tests.test_predict import CASES, ckpt  # noqa: F401  (the module's fit fixture)


def _blobs() -> np.ndarray:
    vol = np.zeros((6, 16, 16), dtype=bool)
    vol[0:3, 0:3, 0:3] = True        # 27 voxels
    vol[4:6, 10:12, 10:12] = True    # 8 voxels
    vol[3, 3, 3] = True              # touches the big blob at a corner only: separate
    return vol


def test_largest_component_keeps_the_biggest_face_connected_region():
    kept = largest_component(_blobs())
    expected = np.zeros_like(kept)
    expected[0:3, 0:3, 0:3] = True
    np.testing.assert_array_equal(kept, expected)
    empty = np.zeros((2, 4, 4), dtype=bool)
    assert not largest_component(empty).any()
    np.testing.assert_array_equal(postprocess(_blobs(), "none"), _blobs())
    with pytest.raises(ValueError, match="unknown post-processing"):
        postprocess(_blobs(), "biggest")
    with pytest.raises(ConfigError, match="train.postprocess"):
        load_config("smoke", overrides={"train.postprocess": "biggest"})


class _Echo(nn.Module):
    """A 'segmentor' whose probability map is its input's first channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


def _validate(truth: np.ndarray, mode: str) -> tuple[dict[str, float], str]:
    image = np.pad(_blobs(), ((0, 0), (8, 8), (8, 8))).astype(np.float32)[:, None]  # (Z,1,32,32)
    mask = np.pad(truth, ((0, 0), (8, 8), (8, 8))).astype(np.uint8)
    source = TrainData(train=None, val=lambda: [("case", image, mask)])  # type: ignore[arg-type]
    cfg = load_config("smoke", overrides={"train.postprocess": mode, "train.channels_last": False})
    return validate(SimpleNamespace(evaluated=_Echo()), cfg, source, torch.device("cpu"))  # type: ignore[arg-type]


def test_auto_chooses_the_mode_with_the_higher_validation_dice():
    only_big = largest_component(_blobs())
    report, chosen = _validate(only_big, "auto")
    # none: 27 true of 36 predicted → dice 2·27/(36+27) = 6/7; largest component: 1
    assert chosen == "largest_component" and report["val/dice"] == pytest.approx(1.0)
    assert report["val/dice_none"] == pytest.approx(6 / 7)
    report, chosen = _validate(_blobs(), "auto")   # truth has every blob: keep them
    assert chosen == "none" and report["val/dice"] == pytest.approx(1.0)
    report, chosen = _validate(only_big, "none")   # not auto: as configured, one number
    assert chosen == "none" and "val/dice_none" not in report


def test_checkpoint_postprocessing_prefers_the_stored_choice():
    def cfg(mode):
        return {"config": load_config("smoke", overrides={"train.postprocess": mode}).to_dict()}

    assert checkpoint_postprocessing({**cfg("auto"), "postprocess": "largest_component"}) == \
        "largest_component"
    assert checkpoint_postprocessing(cfg("auto")) == "none"   # never validated: as predicted
    assert checkpoint_postprocessing(cfg("largest_component")) == "largest_component"


def test_predict_applies_the_checkpoints_postprocessing(ckpt):  # noqa: F811
    state = dict(ckpt[1])
    plain, *_ = predict_case({**state, "postprocess": "none"}, CASES["2018"])
    kept, *_ = predict_case({**state, "postprocess": "largest_component"}, CASES["2018"])
    np.testing.assert_array_equal(kept, largest_component(plain > 0).astype(np.uint8))
