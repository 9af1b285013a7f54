"""Hand-made cases for dpo_utils.metrics: distinguishability, concentration, trace, gaps."""

import math

import pytest
import torch

from dpo_utils import metrics


def _two_points():
    # Yes class: (2, 0), (4, 0); No class: (0, 1), (0, 3)
    feats = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    signs = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    return feats, signs


def test_distinguishability_is_the_distance_between_class_means():
    feats, signs = _two_points()
    # means (3, 0) and (0, 2): distance sqrt(13)
    assert math.isclose(
        float(metrics.distinguishability(feats, signs)), math.sqrt(13), rel_tol=1e-12
    )


def test_distinguishability_is_batched_over_leading_indices():
    feats, signs = _two_points()
    batch = torch.stack([feats, 2 * feats])
    out = metrics.distinguishability(batch, torch.stack([signs, signs]))
    assert torch.allclose(out, torch.tensor([1.0, 2.0], dtype=torch.float64) * math.sqrt(13))


def test_concentration_and_trace_on_a_hand_made_case():
    feats, signs = _two_points()
    # Yes class varies only along x: cov = [[2, 0], [0, 0]] (unbiased, (2-4)^2/2 / ... = 2)
    # No class varies only along y: cov = [[0, 0], [0, 2]]
    assert math.isclose(metrics.concentration(feats, signs), 2.0, rel_tol=1e-12)
    assert math.isclose(metrics.covariance_trace(feats, signs), 2.0, rel_tol=1e-12)
    # spectral norm differs from the trace once a class spreads in two directions
    feats2 = torch.cat([feats, torch.tensor([[3.0, 2.0], [3.0, -2.0]], dtype=torch.float64)])
    signs2 = torch.cat([signs, torch.tensor([1.0, 1.0], dtype=torch.float64)])
    cov_yes = torch.cov(feats2[signs2 > 0].T)
    assert math.isclose(
        metrics.covariance_trace(feats2, signs2), float(torch.trace(cov_yes)), rel_tol=1e-12
    )
    assert metrics.concentration(feats2, signs2) < metrics.covariance_trace(feats2, signs2)


def test_empty_class_is_rejected():
    feats, _ = _two_points()
    with pytest.raises(ValueError, match="at least one"):
        metrics.distinguishability(feats, torch.ones(4, dtype=torch.float64))


def test_priority_gap_hand_made_pairs():
    # collinear, lengths 2 and 1: b = (1.5, 0), p = (2, 1), gap = (2 - 1) / 2 = 0.5
    d = torch.tensor([[2.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    gap = metrics.priority_gap_matrix(d)
    assert torch.allclose(gap, torch.tensor([[0.0, 0.5], [-0.5, 0.0]], dtype=torch.float64))
    # orthogonal, equal length: symmetric, gap 0;
    # unequal (3 and 1): b = (1.5, .5), p = (4.5, .5)/|b|
    d = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b_norm = math.sqrt(1.5**2 + 0.5**2)
    expected = (4.5 - 0.5) / b_norm / 3.0
    assert math.isclose(float(metrics.priority_gap_matrix(d)[0, 1]), expected, rel_tol=1e-12)
    # opposite directions with equal length: b = 0, gap defined as 0
    d = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert float(metrics.priority_gap_matrix(d)[0, 1]) == 0.0


def test_priority_gap_is_antisymmetric_and_scale_free():
    d = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gap = metrics.priority_gap_matrix(d)
    assert torch.allclose(gap, -gap.T, atol=1e-12)
    assert torch.allclose(metrics.priority_gap_matrix(3.0 * d), gap, atol=1e-12)
    assert torch.all(gap.diagonal() == 0)


def test_best_linear_accuracy_closed_form_and_monte_carlo():
    # isotropic: Phi(gap / (2 sigma)); gap 2, sigma 1 -> Phi(1) = 0.8413
    assert math.isclose(
        metrics.best_linear_accuracy(torch.tensor([2.0, 0.0]), 1.0), 0.841344746, rel_tol=1e-8
    )
    # a full covariance equals the scalar case when it is s^2 I
    cov = 4.0 * torch.eye(3, dtype=torch.float64)
    d = torch.tensor([1.0, 2.0, 2.0])
    assert math.isclose(
        metrics.best_linear_accuracy(d, cov), metrics.best_linear_accuracy(d, 4.0), rel_tol=1e-12
    )
    # Monte Carlo: the Bayes rule sign(d' S^-1 x) on Gaussian classes reaches the formula
    g = torch.Generator().manual_seed(1)
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)
    d = torch.tensor([1.0, -0.5], dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    n = 200_000
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) @ chol.T
    s = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0).double()
    x = x + s[:, None] * d / 2
    acc = float(((x @ torch.linalg.solve(cov, d)) * s > 0).double().mean())
    assert abs(acc - metrics.best_linear_accuracy(d, cov)) < 0.005


def test_best_linear_accuracy_rejects_bad_covariance():
    with pytest.raises(ValueError, match="covariance=0"):
        metrics.best_linear_accuracy(torch.tensor([1.0]), 0)
    with pytest.raises(ValueError, match="shape"):
        metrics.best_linear_accuracy(torch.tensor([1.0, 0.0]), torch.eye(3))


def test_two_behaviour_priority_gap_has_the_sign_of_the_norm_difference():
    """Chapter 04: p_i - p_j = (||d_i||^2 - ||d_j||^2) / (2 ||b||), whatever the angle."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        d = torch.randn(2, 6, generator=g, dtype=torch.float64) * torch.rand(
            2, 1, generator=g, dtype=torch.float64
        )
        b = d.mean(0)
        norms = d.norm(dim=1)
        expected = (norms[0] ** 2 - norms[1] ** 2) / (2 * b.norm() * norms.max())
        gap = metrics.priority_gap_matrix(d)[0, 1]
        assert math.isclose(float(gap), float(expected), rel_tol=1e-10, abs_tol=1e-14)
        assert torch.sign(gap) == torch.sign(norms[0] - norms[1])
