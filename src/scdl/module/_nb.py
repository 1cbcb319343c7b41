"""Negative binomial log-likelihood that spends its log-gamma calls on the non-zero counts.

scvi-tools' ``log_nb_positive`` evaluates ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``
on every entry of the minibatch; on CPU these calls (and their digamma gradients) are about
half the cost of a VAE training step. The three terms cancel exactly where ``x == 0``, and
single-cell counts are mostly zeros (90-95% at 2,000 genes), so evaluating them only on the
non-zero entries gives the same value (up to float summation order) for a fraction of the
work. The other terms are computed as in scvi-tools, with the same ``eps``.
"""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial


def log_nb_sparse(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Elementwise NB log-likelihood, equal to ``scvi.distributions.log_nb_positive``."""
    log_theta_mu_eps = torch.log(theta + mu + eps)
    res = theta * (torch.log(theta + eps) - log_theta_mu_eps)
    # one nonzero() per minibatch; every other gather reuses its flat indices
    flat = torch.nonzero(x.reshape(-1) > 0).squeeze(1)
    if flat.numel() == 0:
        return res
    x_nz = x.reshape(-1)[flat]
    theta_nz = theta.expand_as(x).reshape(-1)[flat]
    nz_terms = (
        x_nz * (torch.log(mu.reshape(-1)[flat] + eps) - log_theta_mu_eps.reshape(-1)[flat])
        + torch.lgamma(x_nz + theta_nz)
        - torch.lgamma(theta_nz)
        - torch.lgamma(x_nz + 1)
    )
    return res.reshape(-1).index_add(0, flat, nz_terms).reshape(res.shape)


class SparseNegativeBinomial(NegativeBinomial):
    """scvi-tools' ``NegativeBinomial`` (mean/inverse-dispersion form) with :func:`log_nb_sparse`.

    Sampling, means and every other method are scvi-tools'.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if self.on_mps or value.dim() != self.mu.dim():
            return super().log_prob(value)
        return log_nb_sparse(value, mu=self.mu, theta=self.theta, eps=self._eps)

    @classmethod
    def from_scvi(cls, px: NegativeBinomial) -> SparseNegativeBinomial:
        return cls(mu=px.mu, theta=px.theta, scale=px.scale)
