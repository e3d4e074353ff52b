"""Every shipped config file loads; bad keys and values fail with the key's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import CONFIG_DIR, ExperimentConfig, load_config, resolve_budget
from core.errors import ConfigError
from core.nested import merge, read_yaml

BUDGETS = sorted(p.stem for p in (CONFIG_DIR / "train").glob("*.yaml"))


def test_defaults_are_the_paper_values():
    cfg = load_config()
    assert cfg == ExperimentConfig()
    assert (cfg.optim.lr_s, cfg.optim.rho, cfg.optim.eps) == (2e-5, 0.9, 1e-7)
    assert cfg.optim.lr_schedule == "constant" and cfg.train.bn_recalibration == 0
    assert (cfg.data.batch_size, cfg.data.train_crop, cfg.optim.critic_clip) == (64, 160, 0.05)
    assert cfg.train.patience == 300 and cfg.train.seed == 1234567890
    assert cfg.model.critic_input == "concat" and cfg.loss.l1_mode == "global"


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_budget_is_the_defaults_plus_its_file(budget):
    layer = read_yaml(CONFIG_DIR / "train" / f"{budget}.yaml")
    assert load_config(budget).to_dict() == merge(ExperimentConfig().to_dict(), layer)


def test_budgets_exist():
    assert {"smoke", "demo", "cpu", "paper"} <= set(BUDGETS)


@pytest.mark.parametrize("budget", BUDGETS)
def test_no_budget_touches_the_evaluation_protocol(budget):
    """Budgets change training only: the threshold and the evaluation window are the protocol's."""
    layer = read_yaml(CONFIG_DIR / "train" / f"{budget}.yaml")
    assert "threshold" not in layer.get("train", {})
    with pytest.raises(ConfigError, match="data.eval_crop' no longer exists: the evaluation window"):
        load_config(budget, overrides={"data.eval_crop": 64})


def test_auto_budget_follows_the_store():
    assert resolve_budget(None, synthetic=True) == ("demo", "auto: synthetic store")
    assert resolve_budget("auto", synthetic=False) == ("cpu", "auto: real store")
    assert resolve_budget("paper", synthetic=True) == ("paper", "given")
    with pytest.raises(ConfigError, match="unknown budget 'papr'"):
        resolve_budget("papr", synthetic=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim.lr": 1e-3}, "unknown config key 'optim.lr' (did you mean 'lr_s'?)"),
        ({"modle.width": 1}, "unknown config key 'modle' (did you mean 'model'?)"),
        ({"optim.lr_s": -1}, "optim.lr_s: must be > 0"),
        ({"data.modalities": ["flair", "t1ce"]}, "unknown modality 't1ce' (did you mean 't1c'?)"),
        ({"data.train_crop": 100}, "data.train_crop: must be a positive multiple of 16"),
        ({"train.max_epochs": "many"}, "train.max_epochs: expected int"),
        ({"transfer.freeze": "s_dim"}, "did you mean 's_din'?"),
        ({"transfer.freeze": "full"}, "needs a source checkpoint"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("smoke", overrides=overrides)
    assert message in str(err.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path: Path):
    bad = tmp_path / "overlay.yaml"
    bad.write_text("train:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"overlay.yaml: unknown config key 'train.max_epoch'"):
        load_config("smoke", overlays=[bad])
    with pytest.raises(ConfigError, match="unknown budget 'smok'"):
        load_config("smok")


def test_round_trip_through_dict():
    cfg = load_config("cpu", overrides={"data.modalities": "t2", "train.seed": 3})
    assert cfg.data.modalities == ("t2",)
    assert cfg.replace({}) == cfg
    assert cfg.replace({"train.seed": 4}).train.seed == 4


@pytest.mark.parametrize("path", sorted((CONFIG_DIR).rglob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_file_parses(path):
    assert isinstance(read_yaml(path), dict)
