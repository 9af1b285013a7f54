"""Synthetic features for the theory chapters: behaviours with a chosen mean gap, spread and tail.

A *behaviour* here is two classes of prompt features in R^d: prompts whose preferred answer is
" Yes" (sign s = +1) and prompts whose preferred answer is " No" (s = -1). Their means are
c + (gap/2) v and c - (gap/2) v for a unit direction v and a shared centre c, so the behaviour's
preference distinguishability ||mu_Yes - mu_No|| equals ``mean_gap``. Around its mean each feature
is ``spread`` times a vector of independent, zero-mean, unit-variance coordinates from a tail
family:

* ``gaussian``: alpha = 2 (sub-Gaussian);
* ``laplace``: alpha = 1 (sub-exponential);
* ``weibull``: alpha = 1/2, a symmetrised Weibull variable with shape 1/2 (heavier tails).

All three have the same mean and covariance (spread^2 I), so only the tails differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "TAIL_FAMILIES",
    "Behavior",
    "sample_noise",
    "sample_behavior",
    "stack_behaviors",
    "random_direction",
]

#: tail family -> its alpha in the alpha-subexponential sense (P(|X| > t) ~ exp(-(t/K)^alpha))
TAIL_FAMILIES: dict[str, float] = {"gaussian": 2.0, "laplace": 1.0, "weibull": 0.5}


@dataclass
class Behavior:
    """Features (n, d) and signs (n,) of one synthetic behaviour, with the population values used.

    Used by: dpo_utils.priority_experiments, dpo_utils.synthetic, dpo_utils.synthetic_experiments.
    """

    features: torch.Tensor
    signs: torch.Tensor
    mean_gap: float
    spread: float
    family: str


def _check_family(family: str) -> None:
    if family not in TAIL_FAMILIES:
        raise ValueError(
            f"family={family!r} is not a tail family; choose one of {list(TAIL_FAMILIES)}."
        )


def sample_noise(
    shape: Sequence[int],
    family: str,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Independent zero-mean, unit-variance entries from one tail family.

    Used by: dpo_utils.synthetic.
    """
    _check_family(family)
    shape = tuple(shape)
    if family == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype)
    # a random sign times a positive magnitude with E[magnitude^2] = 1
    sign = torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1
    uniform = torch.rand(shape, generator=generator, dtype=dtype).clamp_min(1e-300)
    if family == "laplace":  # Exp(1) magnitude scaled by 1/sqrt(2): variance 2 b^2 = 1
        magnitude = -torch.log(uniform) / math.sqrt(2.0)
    else:  # Weibull(shape 1/2, scale lam): E W^2 = lam^2 Gamma(5) = 24 lam^2
        magnitude = torch.log(uniform).square() / math.sqrt(24.0)
    return sign * magnitude


def sample_behavior(
    n_per_class: int,
    dim: int,
    mean_gap: float,
    *,
    spread: float = 1.0,
    family: str = "gaussian",
    center: torch.Tensor | None = None,
    direction: torch.Tensor | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Behavior:
    """Sample one balanced behaviour: ``n_per_class`` " Yes"-preferred then as many "
    No"-preferred.

    ``direction`` (d,) is normalised to unit length (default: the first axis); ``center`` (d,) is
    the shared centre c (default 0). The population distinguishability is exactly ``mean_gap``.

    Used in: notebooks/01_dpo_single_token.ipynb.
    """
    if n_per_class < 1 or dim < 1:
        raise ValueError(f"n_per_class={n_per_class} and dim={dim} must both be >= 1.")
    if mean_gap < 0 or spread < 0:
        raise ValueError(f"mean_gap={mean_gap} and spread={spread} must both be >= 0.")
    generator = torch.Generator().manual_seed(int(seed))
    v = torch.zeros(dim, dtype=dtype)
    if direction is None:
        v[0] = 1.0
    else:
        v = direction.to(dtype) / direction.norm()
    c = torch.zeros(dim, dtype=dtype) if center is None else center.to(dtype)
    signs = torch.cat(
        [torch.ones(n_per_class, dtype=dtype), -torch.ones(n_per_class, dtype=dtype)]
    )
    means = c + signs[:, None] * (mean_gap / 2.0) * v
    noise = sample_noise((2 * n_per_class, dim), family, generator, dtype)
    return Behavior(means + spread * noise, signs, float(mean_gap), float(spread), family)


def stack_behaviors(behaviors: Sequence[Behavior]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack equal-size behaviours into (R, n, d) features and (R, n) signs for the batched
    trainer.

    Used in: notebooks/01_dpo_single_token.ipynb.
    """
    sizes = {tuple(b.features.shape) for b in behaviors}
    if len(sizes) != 1:
        raise ValueError(f"behaviours must have equal shapes to be stacked; got {sorted(sizes)}.")
    return torch.stack([b.features for b in behaviors]), torch.stack([b.signs for b in behaviors])


def random_direction(dim: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A unit vector drawn uniformly from the sphere in R^dim.

    Used by: dpo_utils.priority_experiments, dpo_utils.synthetic_experiments.
    """
    v = torch.randn(dim, generator=torch.Generator().manual_seed(int(seed)), dtype=dtype)
    return v / v.norm()
