"""Tail families of dpo_utils.synthetic: moments, exact tail laws, ordering of tails,
behaviours."""

import math

import pytest
import torch

from dpo_utils import synthetic

N = 400_000


def _noise(family, seed=0, n=N):
    return synthetic.sample_noise((n,), family, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", list(synthetic.TAIL_FAMILIES))
def test_every_family_has_mean_zero_and_variance_one(family):
    x = _noise(family)
    # standard errors: mean 1/sqrt(N) ~ 0.0016; variance sqrt((E x^4 - 1)/N) <= sqrt(69/N) ~ 0.013
    assert abs(float(x.mean())) < 0.01
    assert abs(float(x.var()) - 1.0) < 0.06


@pytest.mark.parametrize("family, kurtosis, tol", [("gaussian", 3.0, 0.1), ("laplace", 6.0, 0.4)])
def test_fourth_moment_matches_the_family(family, kurtosis, tol):
    x = _noise(family, seed=1)
    assert abs(float((x**4).mean()) - kurtosis) < tol


def _exact_tail(family, t):
    if family == "gaussian":
        return math.erfc(t / math.sqrt(2))
    if family == "laplace":  # |X| = Exp(1) / sqrt(2)
        return math.exp(-t * math.sqrt(2))
    return math.exp(-math.sqrt(t * math.sqrt(24)))  # |X| = E^2 / sqrt(24), E ~ Exp(1)


@pytest.mark.parametrize("family", list(synthetic.TAIL_FAMILIES))
@pytest.mark.parametrize("t", [0.5, 1.5, 3.0])
def test_tail_probability_matches_the_exact_law(family, t):
    x = _noise(family, seed=2).abs()
    p = _exact_tail(family, t)
    observed = float((x > t).double().mean())
    assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / N) + 1e-5


def test_heavier_alpha_means_heavier_tails():
    # at t = 4 standard deviations: Gaussian 6e-5 < Laplace 3.5e-3 < Weibull(1/2) 5.6e-3
    tails = {
        f: float((_noise(f, seed=3).abs() > 4).double().mean()) for f in synthetic.TAIL_FAMILIES
    }
    by_alpha = sorted(synthetic.TAIL_FAMILIES, key=synthetic.TAIL_FAMILIES.get, reverse=True)
    assert [tails[f] for f in by_alpha] == sorted(tails.values())
    # and the extreme quantile is ordered the same way
    q = {
        f: float(torch.quantile(_noise(f, seed=4, n=200_000).abs(), 0.9999))
        for f in synthetic.TAIL_FAMILIES
    }
    assert q["gaussian"] < q["laplace"] < q["weibull"]


def test_unknown_family_is_rejected_with_the_allowed_names():
    with pytest.raises(ValueError, match="cauchy.*gaussian.*laplace.*weibull"):
        synthetic.sample_noise((3,), "cauchy", torch.Generator())
    with pytest.raises(ValueError, match="cauchy"):
        synthetic.sample_behavior(5, 2, 1.0, family="cauchy")


@pytest.mark.parametrize("family", list(synthetic.TAIL_FAMILIES))
def test_behaviour_has_the_requested_means_and_covariance(family):
    dim, gap, spread = 4, 3.0, 2.0
    direction = torch.tensor([1.0, 1.0, 0.0, 0.0])
    center = torch.tensor([0.0, 0.0, 5.0, 0.0])
    b = synthetic.sample_behavior(
        50_000, dim, gap, spread=spread, family=family, direction=direction, center=center, seed=5
    )
    yes, no = b.features[b.signs > 0], b.features[b.signs < 0]
    v = direction / direction.norm()
    assert torch.allclose(yes.mean(0), center.double() + gap / 2 * v.double(), atol=0.1)
    assert torch.allclose(no.mean(0), center.double() - gap / 2 * v.double(), atol=0.1)
    assert torch.allclose(
        torch.cov(yes.T), spread**2 * torch.eye(dim, dtype=torch.float64), atol=0.35
    )
    assert b.signs.tolist() == [1.0] * 50_000 + [-1.0] * 50_000


def test_behaviour_is_reproducible_and_seed_dependent():
    a = synthetic.sample_behavior(10, 3, 1.0, seed=7)
    b = synthetic.sample_behavior(10, 3, 1.0, seed=7)
    c = synthetic.sample_behavior(10, 3, 1.0, seed=8)
    assert torch.equal(a.features, b.features) and not torch.equal(a.features, c.features)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="n_per_class=0"):
        synthetic.sample_behavior(0, 3, 1.0)
    with pytest.raises(ValueError, match="mean_gap=-1"):
        synthetic.sample_behavior(3, 3, -1.0)


def test_stack_behaviors_shapes_and_mismatch():
    bs = [synthetic.sample_behavior(5, 3, 1.0, seed=s) for s in range(4)]
    f, s = synthetic.stack_behaviors(bs)
    assert f.shape == (4, 10, 3) and s.shape == (4, 10)
    with pytest.raises(ValueError, match="equal shapes"):
        synthetic.stack_behaviors([bs[0], synthetic.sample_behavior(6, 3, 1.0)])
