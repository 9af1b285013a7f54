"""Paper scale on CPU: the paper profiles' code paths at tiny size (dtypes, memory, saving,
launch, truncation), the accelerate configs, and 2-process runs (DDP and FSDP)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from training_fixtures import tiny_llama, tiny_tokenizer, toy_pairs

from dpo_utils import config, probes, scale, training
from dpo_utils.config import ConfigError

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _paper(profile="llama2-7b", **overrides):
    """A paper profile at tiny batch and step counts; everything else (dtype, lr 1e-6) as
    profiled."""
    base = dict(dpo_batch_size=16, per_device_batch_size=16, dpo_max_steps=2)
    return config.get_config(profile, **{**base, **overrides})


@pytest.mark.parametrize("profile", config.PAPER_PROFILES)
def test_full_dpo_dtypes_at_the_paper_profiles(tok, profile):
    """Policy fp32 (even when handed a bf16 model, as chapter 12 did), reference bf16 and frozen,
    AdamW moments fp32, and lr 1e-6 moves the weights (a pure-bf16 step would round it away)."""
    model = tiny_llama(tok).to(torch.bfloat16)
    start = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    run = training.train_dpo(_paper(profile), model, tok, toy_pairs(32), mode="full")
    policy = {p.dtype for p in run.model.parameters()}
    ref = run.trainer.ref_model
    assert policy == {torch.float32}
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in ref.parameters())
    states = run.trainer.optimizer.state.values()
    moments = {s[k].dtype for s in states for k in ("exp_avg", "exp_avg_sq")}
    assert moments == {torch.float32} and len(states) == len(start)
    moved = sum(not torch.equal(p.detach(), start[n]) for n, p in run.model.named_parameters())
    # threshold: every parameter tensor gets a nonzero AdamW step at step 1 (sign(grad) * lr)
    assert moved == len(start), f"only {moved}/{len(start)} tensors moved at lr 1e-6"
    gpu = training.dpo_arguments(_paper(profile), "full", output_dir="unused", use_cpu=False)
    cpu = training.dpo_arguments(_paper(profile), "full", output_dir="unused", use_cpu=True)
    assert (gpu.optim, cpu.optim) == ("adamw_torch_fused", "adamw_torch")


def test_reference_copy_is_built_in_its_dtype_with_the_policys_weights(tok):
    model = tiny_llama(tok)
    ref = scale.reference_copy(model, torch.bfloat16)
    assert next(model.parameters()).dtype == torch.float32  # the policy's config is not touched
    for (n, p), (m, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert n == m and q.dtype == torch.bfloat16 and torch.equal(p.to(torch.bfloat16), q)


def test_a_finished_run_is_collected_once_dropped(tok):
    """trl's patched forward makes a reference cycle: after ``release`` nothing keeps the policy
    or the reference alive (chapters 08-10 train several runs in one kernel)."""
    model = tiny_llama(tok)
    run = training.train_dpo(_paper(dpo_max_steps=1), model, tok, toy_pairs(16), mode="full")
    policy, ref = weakref.ref(model), weakref.ref(run.trainer.ref_model)
    del model
    run.release()
    assert policy() is None and ref() is None
    assert run.model is None and len(run.log_history) == 1  # the tables stay


def test_a_second_run_frees_the_first_runs_models(tok):
    first = tiny_llama(tok)
    alive = weakref.ref(first)
    training.train_dpo(_paper(dpo_max_steps=1), first, tok, toy_pairs(16), mode="full")
    del first
    # train_dpo collects before it starts: the dropped run is gone before the next one allocates
    training.train_dpo(_paper(dpo_max_steps=1), tiny_llama(tok), tok, toy_pairs(16), mode="lora")
    assert alive() is None
    gc.collect()


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_paper_runs_are_saved_in_bf16_without_optimizer_state(tok, tmp_path, mode):
    run = training.train_dpo(
        _paper(dpo_max_steps=1), tiny_llama(tok), tok, toy_pairs(16), mode=mode
    )
    training.save_trained(run, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists()
    loaded = training.load_trained(tmp_path / "run")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["dtype"] == "bfloat16"
    expect = {n: p.detach().to(torch.bfloat16) for n, p in run.model.named_parameters()}
    if mode == "full":
        for n, p in loaded.model.named_parameters():
            assert torch.equal(p, expect[n]), n
    asked = training.save_trained(run, tmp_path / "fp32", dtype="float32")
    assert {p.dtype for p in training.load_trained(asked).model.parameters()} == {torch.float32}


def test_several_visible_gpus_without_a_launch_stop_with_advice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ConfigError, match="4 GPUs are visible.*CUDA_VISIBLE_DEVICES.*accelerate"):
        scale.check_launch(use_cpu=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    scale.check_launch(use_cpu=False)  # launched: fine


def test_batch_plans_and_the_eight_gpu_error(monkeypatch):
    plans = scale.batch_plans(128, (1, 2, 4, 8), max_per_device=32)
    assert (1, 32, 4) in plans and (4, 32, 1) in plans and (8, 16, 1) in plans
    assert all(n * b * a == 128 for n, b, a in plans) and not any(
        n == 8 and b == 32 for n, b, _ in plans
    )
    monkeypatch.setattr(training, "_world_size", lambda: 8)
    with pytest.raises(ConfigError, match=r"per_device_batch_size from \[1, 2, 4, 8, 16\]"):
        training.dpo_arguments(
            config.get_config("llama2-7b"), "full", output_dir="x", use_cpu=True
        )
    args = training.dpo_arguments(
        config.get_config("llama2-7b", per_device_batch_size=16),
        "full",
        output_dir="x",
        use_cpu=True,
    )
    assert args.gradient_accumulation_steps == 1


def test_authors_prompt_truncation_on_the_paper_profiles(tok):
    """trl 0.7.3 (the authors'): a prompt that does not fit with its answer keeps its last 128
    tokens; prompts that fit (every persona prompt) are untouched. Probes and training agree."""
    long_prompt = "Human: " + " ".join(["I am kind to people"] * 200) + "\n\nAssistant:"
    pair = dict(prompt=long_prompt, chosen=" Yes I am", rejected=" No", behavior="hh")
    enc = probes.encode_pairs(tok, [pair], max_length=512, max_prompt_length=128)
    full_prompt = tok(long_prompt)["input_ids"]
    assert len(full_prompt) > 512 and enc.prompt_ids[0] == full_prompt[-128:]
    row = dict(
        prompt_ids=full_prompt, chosen_ids=enc.chosen_ids[0], rejected_ids=enc.rejected_ids[0]
    )
    trained = training._truncate(row, 512, 128)
    assert trained["prompt_ids"] == enc.prompt_ids[0]
    short = toy_pairs(3)
    assert probes.encode_pairs(tok, short, 512, 128) == probes.encode_pairs(tok, short, 512)
    with pytest.raises(ValueError, match="trl would drop it"):  # the CPU profile keeps trl's rule
        probes.encode_pairs(tok, [pair], max_length=512)
    assert scale.max_prompt_length(config.get_config("cpu")) is None


def test_fsdp_config_derives_the_wrap_class_from_the_model(tok):
    """accelerate 1.15 rejects a list naming both decoder classes; the config names none and the
    class comes from each model's ``_no_split_modules``."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin

    from dpo_utils import models

    cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / "fsdp.yaml"))
    assert "fsdp_transformer_layer_cls_to_wrap" not in cfg.fsdp_config
    for arch, layer in (("llama", "LlamaDecoderLayer"), ("mistral", "MistralDecoderLayer")):
        plugin = FullyShardedDataParallelPlugin(
            auto_wrap_policy="transformer_based_wrap", sync_module_states=False
        )
        plugin.set_auto_wrap_policy(models.tiny_model(arch, tok))
        assert plugin.transformer_cls_names_to_wrap == [layer]
        both = FullyShardedDataParallelPlugin(
            auto_wrap_policy="transformer_based_wrap",
            sync_module_states=False,
            transformer_cls_names_to_wrap=["LlamaDecoderLayer", "MistralDecoderLayer"],
        )
        with pytest.raises(ValueError, match="Could not find the transformer layer class"):
            both.set_auto_wrap_policy(models.tiny_model(arch, tok))


def _launch(tmp_path, config_name: str, mode: str) -> dict:
    out = tmp_path / f"{config_name}-{mode}"
    out.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / f"{config_name}.yaml"),
        str(ROOT / "tests" / "multiprocess_run.py"),
        str(out),
        mode,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_two_process_ddp_run_probes_and_saves(tok, tmp_path):
    """``accelerate launch`` with 2 CPU processes (gloo): accumulation halves, the probes cover
    every step, the model is saved once; the losses equal a one-process run's (same effective
    batch)."""
    ddp = _launch(tmp_path, "cpu_ddp", "full")
    assert ddp["world_size"] == 2 and ddp["wrapper"] == "DistributedDataParallel"
    assert ddp["accumulation"] == 2 and ddp["probe_steps"] == [0, 1, 2]
    assert {"model", "meta.json", "probes.csv"} <= set(ddp["saved"])
    cfg = config.get_config(
        "cpu", dpo_batch_size=16, per_device_batch_size=16, dpo_max_steps=2, full_lr=1e-3
    )
    probe = {"train": toy_pairs(8, seed=3), "test": toy_pairs(6, behavior="other", seed=4)}
    one = training.train_dpo(
        cfg, tiny_llama(tok), tok, toy_pairs(64), mode="full", probe_sets=probe
    )
    loss = one.probes.query("metric == 'loss' and split == 'train'")["value"].tolist()
    # threshold 1e-4: the same 16 pairs per step, in 2 ranks x 2 micro-batches instead of 1
    assert ddp["train_loss"] == pytest.approx(loss, abs=1e-4)


def test_two_process_fsdp_probes_and_saves(tmp_path):
    """FSDP2 shards on 2 CPU processes (accelerate's own FSDP path needs GPUs): the probes run
    through the sharded model's forward and match the unsharded model; save_trained on every rank
    writes the whole model once (the gather is collective, so a rank-0-only save would hang)."""
    fsdp = _launch(tmp_path, "cpu_ddp", "fsdp")
    assert fsdp["world_size"] == 2 and fsdp["wrapper"].startswith("FSDP")
    # thresholds: fp32 on CPU; the sharded forward is the same arithmetic up to summation order
    assert fsdp["max_diff_sharded"] < 1e-4 and fsdp["max_diff_saved"] < 1e-6
