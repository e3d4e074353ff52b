"""The on-device data path and GPU-only decisions, checked on CPU: batches cut on the
device equal the DataLoader's, training with them is the same training, and the CUDA
branches (cuDNN autotuning, peak-memory logging, when the split moves) decide right."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from core.config import load_config
from core.data.dataset import SliceDataset
from core.data.device_batches import DeviceBatches
from core.device import configure_backends, memory_report
from core.errors import ConfigError
from core.trainer import fit
from core.training_data import device_batches_for, epoch_order, split_fits

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _dataset(store, **kw):
    return SliceDataset(store, "train", ("flair", "t2"), crop=48, train=True, seed=3, **kw)


def test_device_batches_equal_the_dataloaders_batches(synthetic_store):
    host, dev = _dataset(synthetic_store), _dataset(synthetic_store)
    feed = DeviceBatches(dev, CPU)
    assert not dev.is_cached and feed.nbytes == len(feed) * (2 * 80 * 80 * 2 + 80 * 80)
    for epoch in (0, 5):
        host.set_epoch(epoch)
        dev.set_epoch(epoch)
        order = torch.randperm(len(host), generator=torch.Generator().manual_seed(epoch)).tolist()
        loader = DataLoader(host, batch_size=16, sampler=order, drop_last=True)
        pairs = list(zip(loader, feed.batches(order, 16, drop_last=True), strict=True))
        assert len(pairs) == len(host) // 16
        for (hi, hm), (di, dm) in pairs:
            assert di.shape == (16, 2, 48, 48) and dm.shape == (16, 1, 48, 48)
            assert torch.equal(hi, di) and torch.equal(hm, dm)


def test_training_on_device_batches_is_the_same_training(synthetic_store, tmp_path):
    runs = {}
    for mode in ("off", "on"):
        cfg = load_config("smoke", overrides={
            "data.store": str(synthetic_store), "data.modalities": ["flair"],
            "data.on_device": mode, "train.max_epochs": 2, "train.bn_recalibration": 32})
        runs[mode] = fit(cfg, tmp_path / mode)
    untimed = [[{k: v for k, v in h.items() if not k.startswith("time/")} for h in r.history]
               for r in runs.values()]
    assert untimed[0] == untimed[1]


def test_when_the_split_moves_to_the_device(synthetic_store):
    def decide(mode, device, cache=True):
        cfg = load_config("smoke", overrides={"data.on_device": mode})
        return device_batches_for(_dataset(synthetic_store, cache=cache), cfg, device)

    assert decide("auto", CPU) is None            # CPU: the host DataLoader
    assert decide("off", CUDA) is None            # asked not to (no CUDA needed to decide)
    assert isinstance(decide("on", CPU), DeviceBatches)
    assert decide("auto", CPU, cache=False) is None
    with pytest.raises(ConfigError, match="data.on_device"):
        decide("on", CPU, cache=False)
    with pytest.raises(ConfigError, match="data.on_device"):
        load_config("smoke", overrides={"data.on_device": "gpu"})


def test_trials_packed_on_one_gpu_fall_back_to_the_host_when_the_split_does_not_fit(
        synthetic_store):
    ds = _dataset(synthetic_store)
    need = ds.cached_bytes
    assert need == len(ds) * (2 * 80 * 80 * 2 + 80 * 80)
    assert split_fits(need, 2 * need) and not split_fits(need, 2 * need - 1)
    lines: list[str] = []
    cfg = load_config("smoke", overrides={"data.on_device": "auto"})
    # a GPU with too little free memory (e.g. four trials on one device): no upload, one line
    assert device_batches_for(ds, cfg, CUDA, free_bytes=need, log=lines.append) is None
    assert len(lines) == 1 and "from the host instead" in lines[0]
    assert ds.is_cached  # the host path keeps its cache


def test_cuda_only_backend_choices():
    before = torch.backends.cudnn.benchmark
    try:
        assert configure_backends(CPU) is False and torch.backends.cudnn.benchmark == before
        assert configure_backends(CUDA) is True and torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
    assert memory_report(CPU) == {}   # peak GPU memory is logged on CUDA only


def test_epoch_order_is_what_both_paths_consume(synthetic_store):
    cfg = load_config("smoke", overrides={"data.slices_per_epoch": 20})
    ds = _dataset(synthetic_store)
    assert epoch_order(ds, cfg, 1) == epoch_order(ds, cfg, 1) != epoch_order(ds, cfg, 2)
    assert len(epoch_order(ds, cfg, 1)) == 20


def test_bench_gpu_counts_the_full_size_step_at_18_66_gflop_per_slice():
    from bench.gpu import step_flops
    from core.trainer import autocast_and_scalers, build_state

    cfg = load_config("smoke", overrides={"model.width": 1.0, "data.train_crop": 160,
                                          "data.batch_size": 2, "train.amp": "off"})
    state = build_state(cfg, CPU)
    autocast, scalers = autocast_and_scalers(cfg, CPU)
    image = torch.rand(2, 4, 160, 160)
    mask = (torch.rand(2, 1, 160, 160) > 0.5).float()
    flops = step_flops(state, cfg, image, mask, scalers, autocast)
    assert flops / 2 / 1e9 == pytest.approx(18.66, abs=0.01)
