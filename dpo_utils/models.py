"""Models and tokenizers: a hub id or path on a GPU box, or tiny Llama / Mistral stand-ins on a
CPU.

GPU profiles load ``AutoModelForCausalLM`` / ``AutoTokenizer`` from ``cfg.model_name`` (a hub id or
a local folder), in bf16 where the device supports it. The CPU profile builds a tokenizer
(ByteLevel BPE, 2,048 tokens, " Yes" and " No" single tokens) and a tiny Llama or Mistral from
config (hidden 64, 2 layers), pre-trains it as a causal LM on
:func:`dpo_utils.pretraining.pretraining_text` (persona text that holds no test-split statement and
no answer of a behaviour any chapter uses), and caches it on disk keyed by the texts' hash, every
setting and the seed. These stand-ins are ~0.4M-parameter models, not Llama-2-7B.

Saving and reloading rebuilds a model from its config plus a state dict. Never ``copy.deepcopy`` a
model that trl has trained: trl rebinds ``forward`` so a deep copy silently runs the original
weights (the copy keeps trl's bound method); use :func:`clone_model` or :func:`save_model` instead.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import ConfigError, ExperimentConfig
from .fingerprint import code_fingerprint
from .pretraining import PRETRAIN_DEFAULTS, pretrain, pretraining_text
from .results import (
    atomic_directory,
    cache_lock,
    config_hash,
    force_rerun,
    record_provenance,
    results_dir,
    trusted_cache,
)

if TYPE_CHECKING:  # for annotations only: importing these costs seconds
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "TinyShape",
    "TINY_MODELS",
    "load_dtype",
    "PRETRAIN_DEFAULTS",
    "train_tokenizer",
    "answer_token_ids",
    "tiny_model",
    "pretrain",
    "pretrained_tiny_model",
    "tiny_model_dir",
    "load_model_and_tokenizer",
    "save_model",
    "load_saved_model",
    "clone_model",
    "lora_config",
    "pretrain_record",
]


@dataclass(frozen=True)
class TinyShape:
    """A CPU stand-in's architecture and shape (chosen in our CPU trials): untied embeddings as in
    Llama-2."""

    arch: str  # "llama" or "mistral"
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 128
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False

    def config_kwargs(self) -> dict[str, Any]:
        """The shape as transformers config arguments: every field but ``arch``."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "arch"}


#: CPU-profile model names -> the stand-in's architecture and shape. Mistral differs from Llama by
#: grouped-query attention (2 key/value heads for 4 query heads, as Mistral-7B shares 8 for 32).
TINY_MODELS: Mapping[str, TinyShape] = {
    "tiny-llama": TinyShape("llama"),
    "tiny-mistral": TinyShape("mistral", num_key_value_heads=2),
}
#: the stand-ins' tokenizer size and default pre-training length
VOCAB_SIZE = 2048
PRETRAIN_STEPS = 300
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
ANSWERS = (" Yes", " No")
_FORMAT_VERSION = 2


def train_tokenizer(texts: Sequence[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A ByteLevel BPE tokenizer trained on ``texts`` that prepends BOS, like Llama's.

    Raises if " Yes" or " No" did not become single tokens (see :func:`answer_token_ids`).

    Used by: dpo_utils.models.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", core.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
    )
    answer_token_ids(tokenizer)
    return tokenizer


def answer_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """The ids of " Yes" and " No" as they follow a prompt ending in a newline; never hard-coded.

    Each answer must add exactly one token after "...\\n", as in the DPO prompt question + "\\n";
    otherwise this raises an error naming the tokens found.

    Used by: dpo_utils.embeddings, dpo_utils.feature_experiments, dpo_utils.models.
    """
    prefix = 'say?\n"x"\n'
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = []
    for answer in ANSWERS:
        full = tokenizer(prefix + answer, add_special_tokens=False)["input_ids"]
        extra = full[len(base) :]
        if full[: len(base)] != base or len(extra) != 1:
            pieces = tokenizer.convert_ids_to_tokens(extra)
            raise ValueError(
                f"{answer!r} is not a single token after a newline for this tokenizer "
                f"(it became {pieces}); single-token answers are required."
            )
        ids.append(extra[0])
    return ids[0], ids[1]


def _model_classes(arch: str):
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }
    if arch not in classes:
        raise ConfigError(
            f"arch={arch!r} is not a tiny model architecture; choose one of {list(classes)}."
        )
    return classes[arch]


def tiny_model(arch: str, tokenizer: PreTrainedTokenizerBase, seed: int = 1234) -> PreTrainedModel:
    """A freshly initialised tiny ``LlamaForCausalLM`` or ``MistralForCausalLM`` (fp32, from
    config).

    The global torch random state is left untouched.

    Used by: dpo_utils.models.
    """
    config_class, model_class = _model_classes(arch)
    tiny = next(t for t in TINY_MODELS.values() if t.arch == arch)
    # Mistral's sliding window (4096 in Mistral-7B) is longer than any text here: off
    extra = {"sliding_window": None} if arch == "mistral" else {}
    config = config_class(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **tiny.config_kwargs(),
        **extra,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval()


def _cache_key(
    arch: str, steps: int, seed: int, vocab_size: int, texts: Sequence[str], source: str
) -> dict:
    return dict(
        kind="tiny-causal-lm",
        version=_FORMAT_VERSION,
        arch=arch,
        # plain values laid out as before the dataclasses (the Llama shape and Mistral's key/value
        # heads): another layout would be a new key, and a retraining, for every saved stand-in
        shape=TINY_MODELS["tiny-llama"].config_kwargs(),
        gqa_mistral=TINY_MODELS["tiny-mistral"].num_key_value_heads,
        vocab_size=vocab_size,
        pretrain_steps=steps,
        seed=seed,
        optimizer=dataclasses.asdict(PRETRAIN_DEFAULTS),
        source=source,
        texts=config_hash({"texts": list(texts)}),
        code=code_fingerprint(["models", "pretraining"]),
    )


def tiny_model_dir(
    arch: str,
    profile: str = "cpu",
    steps: int = PRETRAIN_STEPS,
    seed: int = 1234,
    vocab_size: int = VOCAB_SIZE,
    source: str = "persona",
) -> Path:
    """Where the pre-trained stand-in for these settings is (or will be) cached.

    Used by: dpo_utils.models.
    """
    texts = pretraining_text(source).texts
    return _cache_folder(_cache_key(arch, steps, seed, vocab_size, texts, source), profile)


def _cache_folder(key: dict, profile: str) -> Path:
    return results_dir(profile) / "models" / f"tiny-{key['arch']}-{config_hash(key)}"


def pretrained_tiny_model(
    arch: str,
    profile: str = "cpu",
    steps: int = PRETRAIN_STEPS,
    seed: int = 1234,
    vocab_size: int = VOCAB_SIZE,
    force: bool | None = None,
    source: str = "persona",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The pre-trained tiny model and its tokenizer, from the disk cache or trained now (and
    cached).

    ``source`` ("persona" or "corpus") picks the pre-training text (:mod:`dpo_utils.pretraining`).
    The cache folder ``results/<profile>/models/tiny-<arch>-<hash>`` is keyed by the architecture,
    shape, steps, seed, optimiser settings, source and the texts' hash; ``pretrain.json`` there
    holds the loss log and the training time (CPU and wall seconds, one torch thread). The key also
    holds a fingerprint of this module's code (and the package modules it imports). Writes are
    atomic and locked; a folder whose files do not match their manifest is trained again, with a
    warning. ``force=None`` reads ``$DPO_FORCE_RERUN``.

    Used by: dpo_utils.models.
    """
    texts = pretraining_text(source).texts
    key = _cache_key(arch, steps, seed, vocab_size, texts, source)
    folder = _cache_folder(key, profile)
    with cache_lock(folder):
        if force_rerun(force) or not trusted_cache(
            folder, "pretrain.json", "model", "training it again", stacklevel=4
        ):
            _pretrain_into(folder, key, arch, texts, steps, seed, vocab_size)
            record_provenance("model", folder.name, key["code"], False)
        else:
            record_provenance("model", folder.name, key["code"], True)
        return load_saved_model(folder)


def _pretrain_into(folder, key, arch, texts, steps, seed, vocab_size) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: a second thread only adds contention on 2 cores
    try:
        start, cpu_start = time.perf_counter(), time.process_time()
        tokenizer = train_tokenizer(texts, vocab_size)
        model = tiny_model(arch, tokenizer, seed)
        log = pretrain(model, tokenizer, texts, steps, seed)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    finally:
        torch.set_num_threads(previous)
    with atomic_directory(folder) as tmp:
        save_model(model, tokenizer, tmp)
        info = dict(
            key=key,
            seconds=round(seconds, 2),
            cpu_seconds=round(cpu_seconds, 2),
            torch_threads=1,
            log=log,
        )
        (tmp / "pretrain.json").write_text(json.dumps(info, indent=1))


def load_dtype(cfg: ExperimentConfig, device: str) -> torch.dtype:
    """A profile's model dtype on ``device``: its dtype on a GPU (fp16 without bf16), else fp32.

    Used by: dpo_utils.llm_experiments, dpo_utils.models.
    """
    if device.startswith("cuda") and cfg.dtype == "bfloat16" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.startswith("cuda") and cfg.dtype in ("bfloat16", "float16"):
        return torch.float16
    return torch.float32


def _source(cfg: ExperimentConfig) -> str:
    """The stand-in's pre-training source: "corpus" when the profile's data is the corpus."""
    return "corpus" if cfg.persona_source == "corpus" else "persona"


def load_model_and_tokenizer(
    cfg: ExperimentConfig, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The profile's model (eval mode, on ``device``) and tokenizer.

    ``cfg.model_name`` "tiny-llama" / "tiny-mistral": the cached pre-trained stand-in for
    ``cfg.model_arch`` (trained on first use). Anything else is a hub id or a local folder, loaded
    with ``AutoModelForCausalLM`` / ``AutoTokenizer`` in bf16 where the device supports it.

    Used by: dpo_utils.feature_experiments, dpo_utils.llm_evidence, dpo_utils.llm_experiments,
    dpo_utils.measuring_experiments, dpo_utils.run_cache, dpo_utils.training.
    """
    if cfg.model_name in TINY_MODELS:
        arch = TINY_MODELS[cfg.model_name].arch
        if arch != cfg.model_arch:
            raise ConfigError(
                f"model_name={cfg.model_name!r} is a {arch} model but "
                f"model_arch={cfg.model_arch!r}; set model_arch to {arch!r}."
            )
        model, tokenizer = pretrained_tiny_model(
            cfg.model_arch, cfg.profile, cfg.pretrain_steps, cfg.pretrain_seed, source=_source(cfg)
        )
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model_name)
        try:  # before the weights: the single-token analysis needs " Yes" and " No" as one token
            answer_token_ids(tokenizer)
        except ValueError as error:
            raise ConfigError(f"model_name={cfg.model_name!r}: {error}") from None
        if tokenizer.pad_token is None:  # Llama-2 has none; the authors pad with id 0 (<unk>)
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(cfg.model_name, dtype=load_dtype(cfg, device))
    # transformers decorates PreTrainedModel.to with functools.wraps(Module.to): mypy reads the
    # result as an unbound callable whose first argument is the model, not the device
    return model.to(device).eval(), tokenizer  # type: ignore[arg-type]


def _plain_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    if hasattr(model, "merge_and_unload"):
        raise TypeError(
            "save a PEFT model after merge_and_unload() (or save its adapter with "
            "save_pretrained)."
        )
    return {
        name: tensor.detach().cpu().contiguous().clone()
        for name, tensor in model.state_dict().items()
    }


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path
) -> Path:
    """Write config.json, model.safetensors (a plain state dict) and the tokenizer to ``path``.

    The folder also loads with ``AutoModelForCausalLM.from_pretrained(path)``.

    Used by: dpo_utils.models.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(path)
    save_file(_plain_state_dict(model), str(path / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(path)
    return path


def load_saved_model(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Rebuild a model saved by :func:`save_model` from its config plus state dict; eval mode, CPU.

    Used by: dpo_utils.models.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"{path} holds no model.safetensors; save a model there with save_model first."
        )
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=config.dtype or torch.float32)
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    model.config.name_or_path = str(path)
    model.name_or_path = str(path)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def clone_model(model: PreTrainedModel) -> PreTrainedModel:
    """An independent copy rebuilt from config + state dict (safe after trl training, unlike
    deepcopy).

    Used by: tests and user code; full DPO's reference is built by scale.reference_copy instead.
    """
    from transformers import AutoModelForCausalLM

    copy = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
    copy.load_state_dict(_plain_state_dict(model), strict=True)
    return copy.to(next(model.parameters()).device).eval()


def lora_config(cfg: ExperimentConfig) -> LoraConfig:
    """The authors' LoRA settings from the profile (r, alpha, dropout, q_proj/v_proj, no bias).

    Used by: dpo_utils.training.
    """
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def pretrain_record(cfg: ExperimentConfig) -> dict | None:
    """The ``pretrain.json`` (key, seconds, loss log) of the profile's cached stand-in, or None.

    None for a hub model or a stand-in not trained yet.

    Used in: notebooks/06_measuring_distinguishability.ipynb.
    """
    if cfg.model_name not in TINY_MODELS:
        return None
    folder = tiny_model_dir(
        cfg.model_arch, cfg.profile, cfg.pretrain_steps, cfg.pretrain_seed, source=_source(cfg)
    )
    path = folder / "pretrain.json"
    return json.loads(path.read_text()) if path.is_file() else None
