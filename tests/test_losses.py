import math

import pytest
import torch

from dpo_utils import losses
from dpo_utils.config import ConfigError


def test_dpo_loss_matches_a_hand_computation():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    beta = 0.5
    # margins: 0.5*((-1+2)-(-3+2)) = 1.0 ; 0.5*((-2+2)-(-1+2)) = -0.5
    expected = [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(0.5))]
    per_pair = losses.dpo_loss(pc, pr, rc, rr, beta, reduction="none")
    assert torch.allclose(per_pair, torch.tensor(expected), atol=1e-7)
    assert math.isclose(
        float(losses.dpo_loss(pc, pr, rc, rr, beta)), sum(expected) / 2, abs_tol=1e-7
    )
    assert torch.allclose(losses.reward_margins(pc, pr, rc, rr, beta), torch.tensor([1.0, -0.5]))
    assert torch.allclose(losses.implicit_rewards(pc, rc, beta), torch.tensor([0.5, 0.0]))
    assert float(losses.reward_accuracy(pc, pr, rc, rr)) == 0.5
    assert float(losses.output_accuracy(pc, pr)) == 0.5


def test_policy_equal_to_reference_gives_ln2_and_zero_reward_accuracy():
    logps = torch.randn(10)
    other = torch.randn(10)
    assert math.isclose(
        float(losses.dpo_loss(logps, other, logps, other, 0.1)), math.log(2), abs_tol=1e-7
    )
    assert (
        float(losses.reward_accuracy(logps, other, logps, other)) == 0.0
    )  # strict comparison at ties


@pytest.mark.parametrize("beta", [0, -1.0, float("inf"), float("nan"), "0.1", True])
def test_bad_beta_is_rejected(beta):
    x = torch.zeros(2)
    with pytest.raises(ConfigError, match="beta"):
        losses.dpo_loss(x, x, x, x, beta)


def test_bad_reduction_is_rejected():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="reduction='sum'.*'mean' or 'none'"):
        losses.dpo_loss(x, x, x, x, 0.1, reduction="sum")


def _tiny_llama(tokenizer, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(cfg)


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = (
        'Is the following statement something you would say ? I like cats dogs rain sun " Yes No'
    ).split()
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "<s>", "</s>", "\n", *words])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def test_loss_agrees_with_trl_on_the_same_log_probs(tmp_path):
    """trl 1.16's DPOTrainer computes its sigmoid loss from summed completion log-probs; ours, fed
    the same log-probs (computed here from the same collated batch), must give the same number."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = _word_tokenizer()
    policy, ref = _tiny_llama(tok, 0), _tiny_llama(tok, 1)  # different, so the loss is not ln 2
    rows = [
        {
            "prompt": f"Is the following statement something you would say ? I like {w}\n",
            "chosen": " Yes",
            "rejected": " No",
        }
        for w in ("cats", "dogs", "rain", "sun")
    ]
    args = DPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        beta=0.3,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        per_device_train_batch_size=4,
        max_length=32,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=ref,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))

        def summed_logps(model):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            token_logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(
                -1, batch["input_ids"][:, 1:, None]
            )[..., 0]
            return (token_logps * batch["completion_mask"][:, 1:]).sum(1).chunk(2)

        pc, pr = summed_logps(policy)
        rc, rr = summed_logps(ref)
    ours = float(losses.dpo_loss(pc, pr, rc, rr, beta=0.3))
    assert abs(ours - math.log(2)) > 1e-3  # a real comparison, not the trivial ln 2
    assert abs(ours - trl_loss) < 1e-5


def test_check_count_accepts_integers_and_names_the_bad_value():
    assert losses.check_count("n_pairs", 3) == 3
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ConfigError, match="n_pairs="):
            losses.check_count("n_pairs", bad)
    with pytest.raises(ConfigError, match="integer >= 2"):
        losses.check_count("n_seeds", 1, minimum=2)


def test_rlhf_optimal_policy_maximises_the_kl_regularised_objective():
    g = torch.Generator().manual_seed(3)
    ref = torch.log_softmax(torch.randn(5, generator=g, dtype=torch.float64), -1)
    reward = torch.randn(5, generator=g, dtype=torch.float64)
    beta = 0.3
    opt, log_z = losses.rlhf_optimal_policy(ref, reward, beta)

    def objective(logp):
        p = logp.exp()
        return (p * reward).sum(-1) - beta * (p * (logp - ref)).sum(-1)

    assert math.isclose(float(opt.exp().sum()), 1.0, rel_tol=1e-12)
    assert math.isclose(float(objective(opt)), float(beta * log_z), rel_tol=1e-12)
    others = torch.log_softmax(torch.randn(500, 5, generator=g, dtype=torch.float64), -1)
    assert (objective(others) < objective(opt)).all()
    # the reward is recovered up to beta log Z, which cancels in every Bradley-Terry probability
    assert torch.allclose(beta * (opt - ref) + beta * log_z, reward, atol=1e-12)
    with pytest.raises(ConfigError, match="beta"):
        losses.rlhf_optimal_policy(ref, reward, 0.0)
