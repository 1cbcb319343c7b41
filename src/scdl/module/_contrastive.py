"""The contrastive VAE network: a shared and a salient latent space decoded together.

contrastiveVI's generative model (:cite:`Weinberger23`) built from scvi-tools' layers: two
``scvi.nn.Encoder`` (shared ``z`` for every cell, salient ``s``), one ``DecoderSCVI`` on
``[z, s]`` and a negative binomial likelihood. Background cells decode with ``s = 0``, so
whatever only target cells show must go through ``s``.

What is ours, beyond scvi-tools' ``ContrastiveVAE``:

- two penalties that keep each space to its job. An MMD between the shared codes of
  background and target cells: without it the shared space also codes the target condition
  (the salient code is optional for the decoder, not enforced). The HSIC (Hilbert-Schmidt
  independence criterion) between the shared and the salient code of target cells, a kernel
  measure of their dependence (in the spirit of the total-correlation penalty of Abid &
  Zou's contrastive VAE; gradient into ``s`` only): it keeps cell identity, which ``z``
  already holds, out of ``s``; the decoder still combines the two, so cell-type-specific
  responses are kept.
- one minibatch of mixed cells with a per-cell target flag, so it runs on scdl's fast batch
  path and scvi-tools' standard training plan;
- layer norm instead of batch norm, so a cell's codes do not depend on its minibatch;
- contrastiveVI's Wasserstein penalty on by default.
"""

from __future__ import annotations

from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.distributions import ZeroInflatedNegativeBinomial
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import DecoderSCVI, Encoder
from torch.distributions import Normal, kl_divergence

from ._mmd import batch_mmd, hsic
from ._nb import SparseNegativeBinomial

#: minibatch key of the per-cell flag (1 = target, 0 = background) added by the data loader
TARGET_KEY = "scdl_is_target"


class ContrastiveModule(BaseModuleClass):
    """Shared and salient encoders, one decoder; ``s`` is zero for background cells.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches (``0`` or ``1``: no batch covariate).
    n_hidden
        Units per hidden layer.
    n_shared_latent, n_salient_latent
        Dimensions of the shared and the salient latent spaces.
    n_layers
        Hidden layers in the encoders and the decoder.
    dropout_rate
        Dropout in the encoders.
    gene_likelihood
        ``"nb"`` or ``"zinb"``.
    wasserstein_penalty
        Weight of the squared 2-Wasserstein distance between the salient posterior of
        background cells and a point mass at zero: it keeps the salient encoder from coding
        the variation that background cells share with target cells (contrastiveVI's
        penalty). ``0`` turns it off.
    shared_mmd_weight
        Weight of the MMD between the shared codes (posterior means) of background and target
        cells; ``0`` turns it off.
    independence_weight
        Weight of the HSIC between the shared and the salient codes (posterior means) of
        target cells, which makes the salient code independent of the shared one; ``0`` turns
        it off.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 0,
        n_hidden: int = 128,
        n_shared_latent: int = 10,
        n_salient_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        gene_likelihood: Literal["nb", "zinb"] = "nb",
        wasserstein_penalty: float = 1.0,
        shared_mmd_weight: float = 10.0,
        independence_weight: float = 100.0,
    ):
        super().__init__()
        if gene_likelihood not in ("nb", "zinb"):
            raise ValueError(f"gene_likelihood={gene_likelihood!r} is not one of 'nb', 'zinb'.")
        self.n_batch = n_batch
        self.n_shared_latent = n_shared_latent
        self.n_salient_latent = n_salient_latent
        self.gene_likelihood = gene_likelihood
        self.wasserstein_penalty = float(wasserstein_penalty)
        self.shared_mmd_weight = float(shared_mmd_weight)
        self.independence_weight = float(independence_weight)
        self.px_r = torch.nn.Parameter(torch.randn(n_input))  # gene-wise NB inverse dispersion

        layers = {
            "n_cat_list": [n_batch],
            "n_layers": n_layers,
            "n_hidden": n_hidden,
            "use_batch_norm": False,
            "use_layer_norm": True,
        }
        self.z_encoder = Encoder(
            n_input, n_shared_latent, dropout_rate=dropout_rate, return_dist=True, **layers
        )
        self.s_encoder = Encoder(
            n_input, n_salient_latent, dropout_rate=dropout_rate, return_dist=True, **layers
        )
        self.decoder = DecoderSCVI(n_shared_latent + n_salient_latent, n_input, **layers)

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "batch_index": tensors[REGISTRY_KEYS.BATCH_KEY],
            "is_target": tensors.get(TARGET_KEY),
        }

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor,
        is_target: torch.Tensor | None = None,
    ) -> dict:
        """Posteriors of ``z`` and ``s``; samples, with ``s`` zeroed where ``is_target == 0``.

        Without ``is_target`` (inference outside training) ``s`` is left as sampled and the
        caller decides which cells are target cells.
        """
        library = torch.log(x.sum(1, keepdim=True).clamp(min=1.0))  # a cell without counts: 0
        x_ = torch.log1p(x)
        qz, z = self.z_encoder(x_, batch_index)
        qs, s = self.s_encoder(x_, batch_index)
        if is_target is not None:
            s = s * is_target.view(-1, 1).to(s.dtype)
        return {"qz": qz, "z": z, "qs": qs, "s": s, "library": library}

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            "z": inference_outputs["z"],
            "s": inference_outputs["s"],
            "library": inference_outputs["library"],
            "batch_index": tensors[REGISTRY_KEYS.BATCH_KEY],
        }

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        s: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
    ) -> dict:
        """Count distribution of every gene, decoded from ``[z, s]``."""
        px_scale, _, px_rate, px_dropout = self.decoder(
            "gene", torch.cat([z, s], dim=-1), library, batch_index
        )
        theta = torch.exp(self.px_r)
        if self.gene_likelihood == "zinb":
            px = ZeroInflatedNegativeBinomial(
                mu=px_rate, theta=theta, zi_logits=px_dropout, scale=px_scale
            )
        else:
            px = SparseNegativeBinomial(mu=px_rate, theta=theta, scale=px_scale)
        return {"px": px}

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Negative ELBO per cell plus the Wasserstein, shared-MMD and HSIC penalties.

        KL of ``s`` counts for target cells only: background cells do not use ``s``. The KL
        warm-up weight scales the KL and Wasserstein terms, as in contrastiveVI.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        target = tensors[TARGET_KEY].view(-1).to(x.dtype)
        recon = -generative_outputs["px"].log_prob(x).sum(-1)
        qz, qs = inference_outputs["qz"], inference_outputs["qs"]
        kl_z = kl_divergence(qz, Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale)))
        kl_s = kl_divergence(qs, Normal(torch.zeros_like(qs.loc), torch.ones_like(qs.scale)))
        kl_z = kl_z.sum(-1)
        kl_s = kl_s.sum(-1) * target
        # W2^2 between N(mu, sigma^2) and a point mass at 0 is |mu|^2 + sum(sigma^2)
        w2 = (qs.loc.pow(2) + qs.scale.pow(2)).sum(-1) * (1 - target)
        loss = torch.mean(recon + kl_weight * (kl_z + kl_s + self.wasserstein_penalty * w2))
        extra = {"salient_w2_background": (w2.sum() / (1 - target).sum().clamp_min(1)).detach()}
        if self.shared_mmd_weight > 0:
            mmd = batch_mmd(qz.loc, target.long())
            loss = loss + self.shared_mmd_weight * mmd
            extra["shared_mmd"] = mmd.detach()
        is_target = target > 0.5
        if self.independence_weight > 0:
            # the metric is the penalty's value, in every minibatch's output (0 where fewer
            # than 8 target cells leave the penalty off): processes of a multi-process run
            # must log the same metrics, and a minibatch can hold few target cells
            dep = qs.loc.new_zeros(())
            if int(is_target.sum()) >= 8:
                dep = hsic(qz.loc[is_target].detach(), qs.loc[is_target])
                loss = loss + self.independence_weight * dep
            extra["salient_dependence"] = dep.detach()
        return LossOutput(
            loss=loss,
            reconstruction_loss=recon,
            kl_local={"kl_shared": kl_z, "kl_salient": kl_s},
            extra_metrics=extra,
        )

    def sample(self, *args, **kwargs):
        raise NotImplementedError("Sampling counts is not implemented for the contrastive VAE.")
