"""Trainer: learning on phantoms, exact resume, critic clipping, gradient flow."""

from __future__ import annotations

import time

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.config import load_config
from core.device import resolve_device
from core.errors import CheckpointError, ConfigError
from core.trainer import StopTraining, build_state, fit, train_step
from tests.toy_data import phantom_data


def tiny_cfg(**overrides):
    base = {"data.modalities": ["flair"], "data.train_crop": 32,
            "train.seed": 7}
    return load_config("smoke", overrides={**base, **overrides})


def test_tiny_model_learns_discs(tmp_path):
    cfg = tiny_cfg(**{"train.max_epochs": 40, "data.slices_per_epoch": 0,
                      "model.width": 0.25, "train.patience": 0})

    def stop_when_learned(report):
        if report["val/dice"] > 0.85:
            raise StopTraining

    start = time.monotonic()
    result = fit(cfg, tmp_path, callback=stop_when_learned, data_source=phantom_data(n_train=96))
    assert time.monotonic() - start < 60
    assert result.stopped == "callback", "never reached dice 0.85"
    assert result.best_score > 0.8, result.history[-1]
    assert result.history[0]["val/dice"] < result.best_score
    best = load_checkpoint(result.best_path)
    assert best["epoch"] == result.best_epoch
    assert best["metrics"]["val/dice"] == pytest.approx(result.best_score)


def test_resume_is_exact(tmp_path):
    cfg4 = tiny_cfg(**{"train.max_epochs": 4})
    full = fit(cfg4, tmp_path / "one_go", data_source=phantom_data())
    cfg2 = tiny_cfg(**{"train.max_epochs": 2})
    half = fit(cfg2, tmp_path / "split", data_source=phantom_data())
    assert half.epochs == 2
    steps_per_epoch = half.steps // 2
    resumed = fit(cfg4, tmp_path / "split", data_source=phantom_data())
    assert resumed.epochs == 4 and resumed.steps == full.steps == 4 * steps_per_epoch
    a = load_checkpoint(full.last_path)
    b = load_checkpoint(resumed.last_path)
    for net in ("segmentor", "critic"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    def untimed(history):
        return [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]

    assert untimed(a["history"]) == untimed(b["history"])


def _one_step(cfg, channels=1):
    state = build_state(cfg, torch.device("cpu"))
    data = phantom_data(n_train=8, channels=channels)
    image = torch.stack([data.train[i][0] for i in range(8)])
    mask = torch.stack([data.train[i][1] for i in range(8)])
    scalers = (torch.amp.GradScaler("cuda", enabled=False),) * 2
    before = {n: p.detach().clone() for n, p in state.critic.named_parameters()}
    seg_before = {n: p.detach().clone() for n, p in state.segmentor.named_parameters()}
    train_step(state, cfg, image, mask, scalers, lambda: torch.autocast("cpu", enabled=False))
    return state, before, seg_before


def test_critic_kernels_clipped_and_every_parameter_moves():
    cfg = tiny_cfg(**{"optim.lr_d": 1.0, "optim.lr_s": 1e-2})  # huge lr forces clipping
    state, before, seg_before = _one_step(cfg)
    for block in (state.critic.block1, state.critic.block2, state.critic.block3):
        assert block.conv.weight.abs().max() <= 0.05 + 1e-7
    assert state.critic.block1.conv.weight.abs().max().item() == pytest.approx(0.05)
    for name, p in state.critic.named_parameters():
        assert not torch.equal(p, before[name]), f"critic.{name} got no update"
    for name, p in state.segmentor.named_parameters():
        assert not torch.equal(p, seg_before[name]), f"segmentor.{name} got no update"


def test_segan_and_cat_critics_differ_only_in_input():
    cat = build_state(tiny_cfg(**{"model.critic_input": "concat"}), torch.device("cpu")).critic
    mul = build_state(tiny_cfg(**{"model.critic_input": "multiply"}), torch.device("cpu")).critic
    assert cat.block1.conv.in_channels == 2 and mul.block1.conv.in_channels == 1
    cat_shapes = {n: p.shape for n, p in cat.named_parameters() if not n.startswith("block1.conv.weight")}
    mul_shapes = {n: p.shape for n, p in mul.named_parameters() if not n.startswith("block1.conv.weight")}
    assert cat_shapes == mul_shapes
    image, mask = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    assert torch.equal(cat.critic_input(image, mask), torch.cat([image, mask], 1))
    assert torch.equal(mul.critic_input(image, mask), image * mask)


def test_transfer_from_incompatible_checkpoint_fails_loudly(tmp_path):
    src = fit(tiny_cfg(**{"train.max_epochs": 1}), tmp_path / "src", data_source=phantom_data())
    cfg = tiny_cfg(**{"data.modalities": ["flair", "t2"], "transfer.source": str(src.best_path),
                      "transfer.freeze": "full"})
    with pytest.raises(CheckpointError, match="enc1.conv.weight: checkpoint"):
        build_state(cfg, torch.device("cpu"))


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_cosine_schedule_decays_to_the_floor_over_the_epoch_budget(tmp_path):
    cfg = tiny_cfg(**{"train.max_epochs": 4, "optim.lr_schedule": "cosine", "optim.lr_floor": 0.1,
                      "optim.lr_s": 1e-3})
    result = fit(cfg, tmp_path, data_source=phantom_data(n_train=16))
    factors = [h["train/lr_factor"] for h in result.history]
    # progress 0, 1/4, 2/4, 3/4 at the start of each epoch: 0.1 + 0.9 * (1 + cos(pi p)) / 2
    expected = [0.1 + 0.9 * (1 + torch.cos(torch.tensor(torch.pi * p)).item()) / 2
                for p in (0, 0.25, 0.5, 0.75)]
    assert factors == pytest.approx(expected)
    state = load_checkpoint(result.last_path)
    assert state["opt_s"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * expected[-1])
    constant = fit(tiny_cfg(**{"train.max_epochs": 2}), tmp_path / "c", data_source=phantom_data(16))
    assert [h["train/lr_factor"] for h in constant.history] == [1.0, 1.0]


def test_time_cap_counts_time_across_resumes(tmp_path):
    cfg = tiny_cfg(**{"train.max_epochs": 50, "train.max_seconds": 0.5})
    first = fit(cfg, tmp_path, data_source=phantom_data(n_train=16))
    assert first.stopped == "max_seconds" and first.epochs < 50
    spent = load_checkpoint(first.last_path)["seconds"]
    assert spent >= 0.5
    again = fit(cfg, tmp_path, data_source=phantom_data(n_train=16))  # budget already used
    assert again.epochs == first.epochs + 1 and again.stopped == "max_seconds"


@pytest.mark.parametrize(("overrides", "stopped", "epochs"), [
    ({"train.max_steps": 5}, "max_steps", 3),      # 2 steps per epoch: checked at epoch ends
    ({"train.max_epochs": 3}, "max_epochs", 3),
])
def test_step_and_epoch_caps(tmp_path, overrides, stopped, epochs):
    cfg = tiny_cfg(**{"train.max_epochs": 10, "data.slices_per_epoch": 16, **overrides})
    result = fit(cfg, tmp_path, data_source=phantom_data(n_train=16))
    assert (result.stopped, result.epochs) == (stopped, epochs)


def test_patience_stops_after_no_improvement(tmp_path):
    cfg = tiny_cfg(**{"train.max_epochs": 30, "train.patience": 2, "optim.lr_s": 1e-9,
                      "optim.lr_d": 1e-9})  # no learning: the best stays at an early epoch
    result = fit(cfg, tmp_path, data_source=phantom_data(n_train=16))
    assert result.stopped == "patience"
    assert result.epochs - result.best_epoch == 2


def test_val_every_validates_on_its_epochs_and_the_last(tmp_path):
    cfg = tiny_cfg(**{"train.max_epochs": 5, "train.val_every": 2})
    result = fit(cfg, tmp_path, data_source=phantom_data(n_train=16))
    validated = [int(h["epoch"]) for h in result.history if "val/dice" in h]
    assert validated == [2, 4, 5]


def test_carry_optimizer_takes_the_segmentor_state_only_when_groups_match(tmp_path):
    source = fit(tiny_cfg(**{"train.max_epochs": 1}), tmp_path / "src",
                 data_source=phantom_data(n_train=16))
    src = load_checkpoint(source.best_path)
    carry = {"transfer.source": str(source.best_path), "transfer.carry_optimizer": True}
    state = build_state(tiny_cfg(**carry, **{"transfer.freeze": "full"}), torch.device("cpu"))
    carried = state.opt_s.state_dict()["state"]
    assert carried and all(torch.equal(carried[k]["square_avg"], src["opt_s"]["state"][k]["square_avg"])
                           for k in carried)
    assert not state.opt_d.state_dict()["state"]  # the critic starts with a fresh optimiser
    with pytest.raises(ConfigError, match="carry_optimizer.*use carry_optimizer: false"):
        build_state(tiny_cfg(**carry, **{"transfer.freeze": "decoder_only"}), torch.device("cpu"))


def test_a_source_with_other_channels_is_refused_naming_the_layers(tmp_path):
    four = fit(tiny_cfg(**{"train.max_epochs": 1, "data.modalities": ["flair", "t1", "t1c", "t2"]}),
               tmp_path / "four", data_source=phantom_data(n_train=16, channels=4))
    cfg = tiny_cfg(**{"transfer.source": str(four.best_path), "transfer.freeze": "full"})
    with pytest.raises(CheckpointError, match=r"segmentor from .*shape mismatch: enc1\.conv\.weight: "
                       r"checkpoint \(8, 4, 4, 4\) vs model \(8, 1, 4, 4\)"):
        build_state(cfg, torch.device("cpu"))


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step(tmp_path):
    """``train.compile``: the step runs the compiled modules, which share the networks'
    parameters, and gives the eager step's losses and updates (to float tolerance)."""
    cfg = tiny_cfg(**{"train.compile": True})
    data = phantom_data(n_train=8)
    image = torch.stack([data.train[i][0] for i in range(8)])
    mask = torch.stack([data.train[i][1] for i in range(8)])
    scalers = (torch.amp.GradScaler("cuda", enabled=False),) * 2
    off = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    eager, compiled = build_state(cfg, torch.device("cpu")), build_state(cfg, torch.device("cpu"))
    compiled.segmentor.load_state_dict(eager.segmentor.state_dict())  # the same start
    compiled.critic.load_state_dict(eager.critic.state_dict())
    compiled.step_modules = (torch.compile(compiled.segmentor), torch.compile(compiled.critic))
    from torch._dynamo.utils import counters

    counters.clear()
    for _ in range(3):  # steps 2 and 3 run on the weights steps 1 and 2 updated
        a = train_step(eager, cfg, image, mask, scalers, off)
        b = train_step(compiled, cfg, image, mask, scalers, off)
        assert b == pytest.approx(a, rel=1e-3, abs=1e-5)
    assert counters["stats"]["unique_graphs"] >= 2  # the step did run compiled graphs
    result = fit(cfg.replace({"train.max_epochs": 1}), tmp_path, data_source=phantom_data(n_train=8))
    assert result.epochs == 1 and "segmentor" in load_checkpoint(result.best_path)
