"""One short DPO run under ``accelerate launch`` (2 CPU processes, gloo), probes and save included.

    accelerate launch --config_file configs/accelerate/cpu_ddp.yaml tests/multiprocess_run.py \
        OUT MODE

Run by tests/test_multiprocess.py for DDP and FSDP: the tiny Llama of the training tests, full DPO
(or LoRA) for 2 optimizer steps with per-behaviour probes, then ``save_trained`` on every process.
The main process writes ``OUT/summary.json`` (world size, the wrapper class, losses, saved files).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_fixtures import tiny_llama, tiny_tokenizer, toy_pairs  # noqa: E402

from dpo_utils import config, training  # noqa: E402


def main(out: str, mode: str) -> None:
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    cfg = config.get_config(
        "cpu", dpo_batch_size=16, per_device_batch_size=4, dpo_max_steps=2, full_lr=1e-3
    )
    pairs = toy_pairs(64)
    probe = {"train": toy_pairs(8, seed=3), "test": toy_pairs(6, behavior="other", seed=4)}
    run = training.train_dpo(
        cfg, tiny_llama(tok), tok, pairs, mode=mode, probe_sets=probe, output_dir=f"{out}/trl"
    )
    training.save_trained(run, Path(out) / "run")
    acc = run.trainer.accelerator
    if acc.is_main_process:
        loss = run.probes.query("metric == 'loss' and split == 'train'")["value"].tolist()
        summary = dict(
            world_size=acc.num_processes,
            distributed_type=str(acc.distributed_type),
            wrapper=type(run.trainer.model_wrapped).__name__,
            accumulation=run.trainer.args.gradient_accumulation_steps,
            probe_steps=sorted(run.probes["step"].unique().tolist()),
            train_loss=loss,
            saved=sorted(p.name for p in (Path(out) / "run").iterdir()),
        )
        (Path(out) / "summary.json").write_text(json.dumps(summary))


def sharded(out: str) -> None:
    """Probes and saving through torch's FSDP2 on 2 CPU processes (accelerate's FSDP needs GPUs).

    The probe log-probs of the sharded model must equal the unsharded model's, and ``save_trained``
    (called on every process) must write the unsharded model's weights.
    """
    from types import SimpleNamespace

    from accelerate import Accelerator
    from torch.distributed.fsdp import fully_shard

    from dpo_utils import probes

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    tok = tiny_tokenizer()
    model = tiny_llama(tok).eval()
    enc = probes.encode_pairs(tok, toy_pairs(10, seed=3))
    plain = torch.stack(probes.pair_logps(model, enc, batch_size=4))
    for layer in model.model.layers:  # each decoder layer a unit, as fsdp.yaml wraps them
        fully_shard(layer)
    wrapped = fully_shard(model)
    sharded_lp = torch.stack(probes.pair_logps(wrapped, enc, batch_size=4))
    run = training.DPORun(
        model=wrapped,
        probes=SimpleNamespace(to_csv=lambda *a, **k: None),
        pairs=SimpleNamespace(to_csv=lambda *a, **k: None),
        log_history=SimpleNamespace(to_csv=lambda *a, **k: None),
        mode="full",
        seed=0,
        trainer=SimpleNamespace(accelerator=acc, model=wrapped),
        tokenizer=tok,
    )
    training.save_trained(run, Path(out) / "run")
    if acc.is_main_process:
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(str(Path(out) / "run" / "model"))
        again = torch.stack(probes.pair_logps(saved.eval(), enc, batch_size=4))
        summary = dict(
            world_size=acc.num_processes,
            wrapper=type(wrapped).__name__,
            max_diff_sharded=float((sharded_lp - plain).abs().max()),
            max_diff_saved=float((again - plain).abs().max()),
        )
        (Path(out) / "summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    sharded(sys.argv[1]) if sys.argv[2] == "fsdp" else main(sys.argv[1], sys.argv[2])
