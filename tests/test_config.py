import dataclasses
import math
import os

import pytest

from dpo_utils import config
from dpo_utils.config import ConfigError, get_config


def test_paper_profiles_carry_the_authors_hyperparameters():
    for name in ("llama2-7b", "mistral-7b"):
        cfg = get_config(name)
        assert cfg.requires_gpu
        assert cfg.beta == 0.01 and cfg.dpo_beta == 0.01
        assert (cfg.last_layer_lr, cfg.last_layer_batch_size, cfg.last_layer_steps) == (
            0.1,
            128,
            100,
        )
        assert (cfg.full_lr, cfg.lora_lr) == (1e-6, 1e-5)
        assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules) == (
            8,
            32,
            ("q_proj", "v_proj"),
        )
        assert cfg.dpo_batch_size == 128 and cfg.dpo_epochs == 1 and cfg.dpo_max_steps is None
        assert cfg.seed == 1234
    assert get_config("llama2-7b").model_name == "meta-llama/Llama-2-7b-hf"
    assert get_config("mistral-7b").model_name == "mistralai/Mistral-7B-v0.1"


def test_the_shared_paper_settings_are_config_fields_of_the_same_types():
    # a field that ExperimentConfig lacks, or declares with another type, fails here (KeyError or
    # inequality); every paper profile carries exactly these values
    paper = {f.name: f.type for f in dataclasses.fields(config._PAPER_COMMON)}
    own = {f.name: f.type for f in dataclasses.fields(config.ExperimentConfig)}
    assert paper == {name: own[name] for name in paper}
    for name in config.PAPER_PROFILES:
        values = {k: getattr(config.PROFILES[name], k) for k in paper}
        assert values == dataclasses.asdict(config._PAPER_COMMON)


def test_cpu_profile_is_the_default_and_needs_no_gpu(monkeypatch):
    monkeypatch.delenv("DPO_PROFILE", raising=False)
    cfg = get_config()
    assert cfg.profile == "cpu" and not cfg.requires_gpu
    assert config.require_device(cfg) == "cpu"
    monkeypatch.setenv("DPO_PROFILE", "mistral-7b")
    assert get_config().profile == "mistral-7b"


def test_none_overrides_keep_the_profile_value_and_others_replace_it():
    base = get_config("cpu")
    assert get_config("cpu", beta=None, last_layer_lr=None) == base
    cfg = get_config("cpu", beta=0.5, last_layer_steps=7, lora_target_modules=["q_proj"])
    assert (cfg.beta, cfg.last_layer_steps, cfg.lora_target_modules) == (0.5, 7, ("q_proj",))
    assert cfg.replace(beta=None) == cfg and cfg.replace(beta=0.2).beta == 0.2


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"beta": 0}, "beta=0"),
        ({"beta": -0.1}, "beta=-0.1"),
        ({"dpo_beta": math.nan}, "dpo_beta=nan"),
        ({"last_layer_lr": 0.0}, "last_layer_lr=0.0"),
        ({"full_lr": -1e-6}, "full_lr=-1e-06"),
        ({"lora_lr": "fast"}, "lora_lr='fast'"),
        ({"last_layer_steps": 0}, "last_layer_steps=0"),
        ({"dpo_max_steps": 0}, "dpo_max_steps=0"),
        ({"last_layer_batch_size": 0}, "last_layer_batch_size=0"),
        ({"dpo_batch_size": 2.5}, "dpo_batch_size=2.5"),
        ({"n_seeds": True}, "n_seeds=True"),
        ({"model_arch": "gpt2"}, "model_arch='gpt2'"),
        ({"per_device_batch_size": 64}, "per_device_batch_size=64"),
    ],
)
def test_bad_values_are_rejected_with_the_value_and_what_is_allowed(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        get_config("cpu", **overrides)
    message = str(info.value)
    assert fragment in message
    assert any(word in message for word in ("must", "choose"))


def test_unknown_profile_and_unknown_keys_list_the_allowed_ones():
    with pytest.raises(
        ConfigError, match=r"unknown profile 'llama3'.*'cpu'.*'llama2-7b'.*'mistral-7b'"
    ):
        get_config("llama3")
    with pytest.raises(
        ConfigError, match=r"unknown parameter\(s\) \['learning_rate'\].*last_layer_lr"
    ):
        get_config("cpu", learning_rate=0.1)


def test_gpu_profile_without_gpu_stops_with_a_clear_message(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"'llama2-7b' needs a CUDA GPU.*DPO_PROFILE=cpu"):
        config.require_device(get_config("llama2-7b"))


def test_describe_names_profile_and_model():
    text = config.describe(get_config("cpu"), steps=100)
    assert "profile **cpu**" in text and "tiny-llama" in text and "steps **100**" in text
    assert "Not Llama-2-7B" in text


# ---- the tiny stand-in switch (DPO_TINY_STAND_IN, dpo_utils.stand_in) ---------------------------

_SIZED = {"model_name", "persona_source", "dpo_max_steps", "pretrain_steps", "max_length"}


@pytest.mark.parametrize(
    "profile, stand_in", [("llama2-7b", "tiny-llama"), ("mistral-7b", "tiny-mistral")]
)
def test_the_switch_keeps_the_paper_profile_but_its_model_data_and_sizes(
    monkeypatch, profile, stand_in
):
    from dpo_utils import stand_in as switch

    monkeypatch.delenv(config.MODEL_ENV_VAR, raising=False)
    monkeypatch.setenv(switch.STAND_IN_ENV_VAR, "1")
    cfg, paper = get_config(profile), config.PROFILES[profile]
    assert (cfg.model_name, cfg.model_arch) == (stand_in, paper.model_arch)
    assert cfg.persona_source == "persona"  # the hub's persona data is unreachable offline
    assert (cfg.dpo_max_steps, cfg.pretrain_steps, cfg.max_length) == (2, 20, 128)
    # everything else is the paper profile's: dtype, batch sizes, chained split, behaviours...
    same = {k: v for k, v in cfg.to_dict().items() if k not in _SIZED | {"description"}}
    assert same == {k: v for k, v in paper.to_dict().items() if k in same}
    assert cfg.dtype == "bfloat16" and cfg.split == "chained" and cfg.requires_gpu
    # the page says what it is, and the stand-in runs on the CPU
    assert "TINY STAND-IN CHECK" in config.describe(cfg) and paper.model_name in cfg.description
    assert config.require_device(cfg) == "cpu"
    # a smaller value given is kept, a larger one capped
    assert get_config(profile, dpo_max_steps=1).dpo_max_steps == 1
    assert get_config(profile, dpo_max_steps=50, pretrain_steps=300).dpo_max_steps == 2
    assert get_config(profile, persona_source="corpus").persona_source == "corpus"


def test_the_switch_is_off_unless_set_to_one_and_leaves_the_cpu_profile_alone(monkeypatch):
    from dpo_utils import stand_in as switch

    monkeypatch.delenv(config.MODEL_ENV_VAR, raising=False)
    for value in (None, "", "0"):
        if value is None:
            monkeypatch.delenv(switch.STAND_IN_ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(switch.STAND_IN_ENV_VAR, value)
        assert get_config("llama2-7b") == config.PROFILES["llama2-7b"]
    monkeypatch.setenv(switch.STAND_IN_ENV_VAR, "yes")
    with pytest.raises(ConfigError, match=r"DPO_TINY_STAND_IN='yes' is not allowed.*'1'"):
        get_config("llama2-7b")
    monkeypatch.setenv(switch.STAND_IN_ENV_VAR, "1")
    assert get_config("cpu") == config.PROFILES["cpu"]  # already the stand-ins, full CPU sizes


def test_the_switch_refuses_a_second_model_and_a_profile_without_a_stand_in(monkeypatch):
    from dpo_utils import stand_in as switch

    monkeypatch.setenv(switch.STAND_IN_ENV_VAR, "1")
    monkeypatch.setenv(config.MODEL_ENV_VAR, "Qwen/Qwen2.5-1.5B")
    with pytest.raises(ConfigError, match=r"replaces the model with 'tiny-llama'.*Qwen2.5-1.5B"):
        get_config("llama2-7b")
    monkeypatch.setenv(config.MODEL_ENV_VAR, "tiny-llama")  # the same stand-in: no conflict
    assert get_config("llama2-7b").model_name == "tiny-llama"
    monkeypatch.delenv(config.MODEL_ENV_VAR)
    with pytest.raises(ConfigError, match=r"replaces the model with 'tiny-llama'.*tiny-mistral"):
        get_config("llama2-7b", model_name="tiny-mistral")  # the other architecture's
    with pytest.raises(ConfigError, match=r"'colab-t4' is a qwen2 model.*'llama2-7b'"):
        get_config("colab-t4")
    monkeypatch.delenv("DPO_RESULTS_DIR")  # never into results/<profile>/ of the paper runs
    with pytest.raises(ConfigError, match=r"needs DPO_RESULTS_DIR set to a scratch folder"):
        get_config("mistral-7b")
    from dpo_utils.results import project_root

    monkeypatch.setenv("DPO_RESULTS_DIR", str(project_root() / "results"))  # the real one
    with pytest.raises(ConfigError, match=r"other than the project's results/"):
        get_config("mistral-7b")


def test_a_stand_in_goes_offline_and_a_paper_model_still_needs_a_gpu(monkeypatch):
    import torch

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    config.network_environment(get_config("llama2-7b", model_name="tiny-llama"))
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        config.require_device(get_config("llama2-7b"))
