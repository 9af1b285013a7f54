"""Measurements of preference data in feature space: distinguishability and its companions.

Definitions follow the authors' released code (book/notation.md): for a behaviour with features e
and signs s (+1 when " Yes" is preferred), distinguishability is ||mu_Yes - mu_No||.
"""

from __future__ import annotations

import torch

__all__ = [
    "class_means",
    "distinguishability",
    "concentration",
    "covariance_trace",
    "priority_gap_matrix",
    "linear_probe_accuracy",
    "properties_table",
    "best_linear_accuracy",
]


def class_means(features: torch.Tensor, signs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of the " Yes"-preferred and " No"-preferred features, per leading index.

    ``features`` (..., n, d), ``signs`` (..., n) of +1/-1. Raises if a class is empty.

    Used by: dpo_utils.feature_experiments, dpo_utils.llm_experiments, dpo_utils.metrics,
    dpo_utils.priority_experiments.
    """
    pos = (signs > 0).to(features.dtype).unsqueeze(-1)
    n_yes, n_no = pos.sum(-2), (1 - pos).sum(-2)
    if torch.any(n_yes == 0) or torch.any(n_no == 0):
        raise ValueError(
            "each behaviour needs at least one ' Yes'-preferred and one ' No'-preferred pair."
        )
    return (features * pos).sum(-2) / n_yes, (features * (1 - pos)).sum(-2) / n_no


def distinguishability(features: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Preference distinguishability ||mu_Yes - mu_No|| per leading index.

    Used by: dpo_utils.feature_experiments, dpo_utils.feature_models, dpo_utils.linear,
    dpo_utils.metrics, dpo_utils.synthetic_experiments.
    """
    mu_yes, mu_no = class_means(features, signs)
    return (mu_yes - mu_no).norm(dim=-1)


def _class_covariances(
    features: torch.Tensor, signs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unbiased covariance matrices (d, d) of the two classes of one behaviour (n, d)."""
    yes, no = features[signs > 0], features[signs < 0]
    if len(yes) < 2 or len(no) < 2:
        raise ValueError("covariances need at least two pairs of each class.")
    return torch.cov(yes.T), torch.cov(no.T)


def concentration(features: torch.Tensor, signs: torch.Tensor) -> float:
    """max(||Cov_Yes||_2, ||Cov_No||_2), the larger spectral norm of the two class covariances.

    Used by: dpo_utils.metrics.
    """
    cov_yes, cov_no = _class_covariances(features, signs)
    return float(
        max(torch.linalg.matrix_norm(cov_yes, ord=2), torch.linalg.matrix_norm(cov_no, ord=2))
    )


def covariance_trace(features: torch.Tensor, signs: torch.Tensor) -> float:
    """max(tr Cov_Yes, tr Cov_No).

    Used by: dpo_utils.metrics.
    """
    cov_yes, cov_no = _class_covariances(features, signs)
    return float(max(torch.trace(cov_yes), torch.trace(cov_no)))


def priority_gap_matrix(differences: torch.Tensor) -> torch.Tensor:
    """gap[i, j] = (p_i - p_j) / max(||d_i||, ||d_j||) with p_k = <b, d_k>/||b||, b = (d_i +
    d_j)/2.

    ``differences`` (K, d) holds each behaviour's d_k = mu_Yes - mu_No. A positive gap[i, j]
    predicts that behaviour i is learned before j when the two are trained together (the authors'
    proxy). The diagonal is 0; a pair whose mean direction b is 0 gets gap 0.

    Used in: notebooks/04_prioritisation.ipynb.
    """
    d = differences
    b = (d[:, None, :] + d[None, :, :]) / 2  # (K, K, dim)
    b_norm = b.norm(dim=-1)
    safe = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    p_i = (b * d[:, None, :]).sum(-1) / safe
    p_j = (b * d[None, :, :]).sum(-1) / safe
    norms = d.norm(dim=-1)
    scale = torch.maximum(norms[:, None], norms[None, :])
    gap = (p_i - p_j) / torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(b_norm > 0, gap, torch.zeros_like(gap))


def linear_probe_accuracy(
    features: torch.Tensor, signs: torch.Tensor, folds: int = 5, seed: int = 0
) -> float:
    """Cross-validated accuracy of a logistic-regression probe that predicts the sign from e.

    Used by: dpo_utils.metrics.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = features.detach().double().cpu().numpy()
    y = (signs > 0).cpu().numpy().astype(int)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, x, y, cv=splitter).mean())


def best_linear_accuracy(difference: torch.Tensor, covariance: torch.Tensor | float) -> float:
    """Highest accuracy any linear rule reaches on two balanced Gaussian classes with a shared
    covariance.

    For classes N(mu_Yes, S) and N(mu_No, S) with d = mu_Yes - mu_No, the Bayes rule is linear and
    its accuracy is Phi(sqrt(d' S^-1 d) / 2). ``covariance`` is a (d, d) matrix or a scalar
    variance s^2 (S = s^2 I). Only exact for Gaussian classes; for other tails it is a reference
    line, not a ceiling.

    Used in: notebooks/02_update_rate.ipynb, notebooks/03_training_accuracy.ipynb.
    """
    d = difference.double()
    if isinstance(covariance, (int, float)):
        if covariance <= 0:
            raise ValueError(
                f"covariance={covariance!r} must be a positive variance or a (d, d) matrix."
            )
        mahalanobis_sq = float(d @ d) / covariance
    else:
        cov = covariance.double()
        if cov.shape != (d.shape[-1], d.shape[-1]):
            raise ValueError(
                f"covariance has shape {tuple(cov.shape)}; expected {(d.shape[-1], d.shape[-1])}."
            )
        mahalanobis_sq = float(d @ torch.linalg.solve(cov, d))
    normal = torch.distributions.Normal(0.0, 1.0)
    return float(normal.cdf(torch.tensor(mahalanobis_sq**0.5 / 2.0, dtype=torch.float64)))


def properties_table(groups, probe: bool = True, folds: int = 5):
    """One row per behaviour: n, distinguishability, concentration, covariance_trace, mean_norm,
    snr, and (if ``probe``) the cross-validated linear-probe accuracy of Yes vs No.

    ``groups`` maps a behaviour name to its (features (n, d), signs (n,)). ``snr`` is
    distinguishability divided by its size under random labels,
    sqrt(mean class-covariance trace * (1/n_Yes + 1/n_No)), so about 1 means no signal.

    Used by: dpo_utils.llm_experiments, dpo_utils.measuring_experiments.
    """
    import pandas as pd

    rows = []
    for name, (features, signs) in groups.items():
        features = features.double()
        n_yes, n_no = int((signs > 0).sum()), int((signs < 0).sum())
        dist = float(distinguishability(features, signs))
        cov_yes, cov_no = _class_covariances(features, signs)
        noise = (
            0.5 * float(torch.trace(cov_yes) + torch.trace(cov_no)) * (1 / n_yes + 1 / n_no)
        ) ** 0.5
        row = dict(
            behavior=name,
            n=len(signs),
            distinguishability=dist,
            concentration=concentration(features, signs),
            covariance_trace=covariance_trace(features, signs),
            mean_norm=float(features.norm(dim=-1).mean()),
            snr=dist / noise if noise > 0 else float("inf"),
        )
        if probe:
            row["probe_accuracy"] = linear_probe_accuracy(features, signs, folds=folds)
        rows.append(row)
    return pd.DataFrame(rows)
