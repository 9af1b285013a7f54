"""The DPO objective and the quantities logged around it, for tensors of log-probabilities.

All functions take *summed* response log-probabilities (as trl's ``DPOTrainer`` and the authors'
code use), one entry per preference pair, and broadcast over any leading shape.

Notation (book/notation.md): for a pair (x, y_w, y_l), the implicit reward of a response is
r(y) = beta * (log pi(y|x) - log pi_ref(y|x)); the margin is r(y_w) - r(y_l); the DPO loss is
-log sigmoid(margin).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import ConfigError

__all__ = [
    "check_beta",
    "check_count",
    "rlhf_optimal_policy",
    "implicit_rewards",
    "reward_margins",
    "dpo_loss",
    "reward_accuracy",
    "output_accuracy",
]


def check_beta(beta: float) -> float:
    """Return ``beta`` as a float, or raise :class:`ConfigError` unless it is finite and > 0.

    Used by: dpo_utils.feature_models, dpo_utils.linear, dpo_utils.losses, dpo_utils.probes,
    dpo_utils.training.
    """
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or not math.isfinite(beta)
        or beta <= 0
    ):
        raise ConfigError(f"beta={beta!r} is not allowed; beta must be a finite float > 0.")
    return float(beta)


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """Return ``value`` or raise :class:`ConfigError` unless it is an integer >= ``minimum``.

    Used in: notebooks/04_prioritisation.ipynb, notebooks/05_misalignment.ipynb.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{name}={value!r} is not allowed; {name} must be an integer >= {minimum}."
        )
    return value


def rlhf_optimal_policy(
    ref_logps: torch.Tensor, rewards: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form maximiser of E_pi[r] - beta KL(pi || pi_ref) over answers (last dimension).

    Returns (log pi*, log Z) with pi*(y) = pi_ref(y) exp(r(y) / beta) / Z and
    Z = sum_y pi_ref(y) exp(r(y) / beta); the maximum of the objective is beta log Z.

    Used in: notebooks/01_dpo_single_token.ipynb.
    """
    scaled = ref_logps + rewards / check_beta(beta)
    log_z = torch.logsumexp(scaled, dim=-1, keepdim=True)
    return scaled - log_z, log_z.squeeze(-1)


def implicit_rewards(
    policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO's implicit reward beta * (log pi - log pi_ref) of each response.

    Used by: tests/test_losses.py (a reference the margins are checked against).
    """
    return check_beta(beta) * (policy_logps - ref_logps)


def reward_margins(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Margin r(y_w) - r(y_l) of each pair; its sigmoid is the modelled preference probability.

    Computed as beta * ((pc - rc) - (pr - rr)) so that equal log-ratios cancel exactly.

    Used by: dpo_utils.losses, dpo_utils.probes.
    """
    beta = check_beta(beta)
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """The DPO (sigmoid) loss -log sigmoid(margin), averaged (``"mean"``) or per pair (``"none"``).

    Used in: notebooks/01_dpo_single_token.ipynb.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not allowed; choose 'mean' or 'none'.")
    losses = -F.logsigmoid(
        reward_margins(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    )
    return losses.mean() if reduction == "mean" else losses


def reward_accuracy(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 1.0,
) -> torch.Tensor:
    """Share of pairs whose margin is strictly positive (trl's ``rewards/accuracies``).

    It is exactly 0 before training: the policy equals the reference, every margin is 0 and the
    comparison is strict. ``beta`` > 0 does not change the sign, so it defaults to 1.

    Used by: dpo_utils.full_vocab, dpo_utils.probes.
    """
    margins = reward_margins(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return (margins > 0).float().mean()


def output_accuracy(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor) -> torch.Tensor:
    """Share of pairs the policy itself ranks correctly, log pi(y_w) > log pi(y_l), no reference.

    This is what the authors' plots call training/test accuracy (``outputs/accuracies``); before
    training it equals the base model's zero-shot agreement with the labels.

    Used by: dpo_utils.full_vocab, dpo_utils.probes.
    """
    return (policy_chosen > policy_rejected).float().mean()
