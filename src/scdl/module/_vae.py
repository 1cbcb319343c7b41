"""The VAE network: scVI's generative model plus a batch-alignment penalty.

The encoder, decoder and likelihoods are scvi-tools' own (``scvi.module.VAE`` built from
``scvi.nn.Encoder``/``DecoderSCVI``), so scArches surgery (``load_query_data``) works
unchanged. What is ours is the loss: an MMD penalty between batches on the posterior means,
which pulls batches together in the latent space where the decoder's batch covariate alone
leaves them apart (notably on small datasets with strong batch effects); and a negative
binomial likelihood that skips the log-gamma terms on zero counts (same value, ~2x faster
step on CPU; see ``_nb.py``).
"""

from __future__ import annotations

from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial
from scvi.module import VAE as _SCVIModule
from scvi.module._constants import MODULE_KEYS
from scvi.module.base import LossOutput

from ._mmd import batch_mmd
from ._nb import SparseNegativeBinomial


class VAEModule(_SCVIModule):
    """scVI's VAE with an optional batch-MMD term on the latent means.

    Parameters
    ----------
    batch_mmd_weight
        Weight of the MMD penalty between batches (per cell, in the units of the
        reconstruction log-likelihood). ``0`` gives plain scVI.
    **kwargs
        Passed to :class:`scvi.module.VAE`.
    """

    def __init__(self, *args, batch_mmd_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_mmd_weight = float(batch_mmd_weight)

    def generative(self, *args, transform_batch=None, **kwargs):
        out = super().generative(*args, transform_batch=transform_batch, **kwargs)
        px = out[MODULE_KEYS.PX_KEY]
        if type(px) is NegativeBinomial:
            out[MODULE_KEYS.PX_KEY] = SparseNegativeBinomial.from_scvi(px)
        return out

    def loss(self, tensors, inference_outputs, generative_outputs, kl_weight=1.0) -> LossOutput:
        out = super().loss(tensors, inference_outputs, generative_outputs, kl_weight)
        if self.batch_mmd_weight > 0 and self.n_batch > 1:
            mmd = batch_mmd(inference_outputs["qz"].loc, tensors[REGISTRY_KEYS.BATCH_KEY])
            out.loss = out.loss + self.batch_mmd_weight * mmd
            out.extra_metrics["batch_mmd"] = mmd.detach()
        return out
