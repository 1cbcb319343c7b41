"""The VAE network: scVI's generative model plus a batch-alignment penalty.

The encoder, decoder and likelihoods are scvi-tools' own (``scvi.module.VAE`` built from
``scvi.nn.Encoder``/``DecoderSCVI``), so scArches surgery (``load_query_data``) works
unchanged. What is ours is the loss: an MMD penalty between batches on the posterior means,
which pulls batches together in the latent space where the decoder's batch covariate alone
leaves them apart (notably on small datasets with strong batch effects); and a negative
binomial likelihood that skips the log-gamma terms on zero counts (same value, ~2x faster
step on CPU; see ``_nb.py``).

Training minibatches arrive as sparse CSR tensors (``scdl.dataloaders.CSRBatchLoader``): the library
size, the encoder's ``log1p`` input and first layer, and the likelihood's count terms are
then computed on the stored counts only (``_csr.py``, :func:`~._nb.nb_log_lik_csr`). Dense
minibatches (scvi-tools' loaders, used for inference) take scvi-tools' path. The decoder's
zero-inflation head is evaluated only for ``gene_likelihood="zinb"`` (scvi-tools computes
and discards it otherwise).
"""

from __future__ import annotations

import torch
from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial, Poisson
from scvi.module import VAE as _SCVIModule
from scvi.module.base import LossOutput
from torch.distributions import Normal, kl_divergence

from ._csr import csr_entries, encode_csr, fc_forward, one_hots
from ._mmd import batch_mmd
from ._nb import SparseNegativeBinomial, nb_log_lik_csr

# the output keys of scvi-tools' VAE module (its ``MODULE_KEYS``, which it keeps private): its
# training plan and ``RNASeqMixin`` read the inference and generative outputs under these names
Z_KEY, QZ_KEY, QL_KEY, LIBRARY_KEY = "z", "qz", "ql", "library"
PX_KEY, PL_KEY, PZ_KEY = "px", "pl", "pz"
KL_L_KEY, KL_Z_KEY = "kl_divergence_l", "kl_divergence_z"


def _is_csr(x) -> bool:
    return isinstance(x, torch.Tensor) and x.layout == torch.sparse_csr


def _per_gene(theta: torch.Tensor) -> torch.Tensor | None:
    """The per-gene vector behind ``theta`` (broadcast over cells by the distribution)."""
    if theta.dim() == 1:
        return theta
    if theta.dim() == 2 and theta.stride(0) == 0:
        return theta[0]
    return None


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
        n_cont = int(kwargs.get("n_continuous_cov", 0))
        # each continuous covariate enters encoder and decoder as (value - center) / scale;
        # only with covariates, so a model without them saves the weights it saved before
        self.has_covariate_scaling = n_cont > 0
        if self.has_covariate_scaling:
            self.register_buffer("cont_cov_center", torch.zeros(n_cont))
            self.register_buffer("cont_cov_scale", torch.ones(n_cont))

    def set_covariate_scaling(self, center, scale) -> None:
        """Set the center and scale of the continuous covariates (one value per covariate)."""
        dtype = self.cont_cov_center.dtype
        self.cont_cov_center.copy_(torch.as_tensor(center, dtype=dtype))
        self.cont_cov_scale.copy_(torch.as_tensor(scale, dtype=dtype))

    def _scaled_covariates(self, inputs: dict) -> dict:
        cont = inputs.get("cont_covs")
        if cont is not None and self.has_covariate_scaling:
            # on the data's device: scvi-tools moves a minibatch to the module's after this
            center = self.cont_cov_center.to(cont.device, cont.dtype)
            inputs["cont_covs"] = (cont - center) / self.cont_cov_scale.to(cont.device, cont.dtype)
        return inputs

    def _get_inference_input(self, *args, **kwargs):
        return self._scaled_covariates(super()._get_inference_input(*args, **kwargs))

    def _get_generative_input(self, *args, **kwargs):
        return self._scaled_covariates(super()._get_generative_input(*args, **kwargs))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, fill in (("cont_cov_center", 0.0), ("cont_cov_scale", 1.0)):
            if self.has_covariate_scaling and prefix + name not in state_dict:
                # saved before covariates were standardised: those models read them raw
                state_dict[prefix + name] = torch.full_like(getattr(self, name), fill)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _csr_supported(self) -> bool:
        return (
            self.use_observed_lib_size
            and self.batch_representation != "embedding"
            and self.log_variational
        )

    def _regular_inference(self, x, batch_index, cont_covs=None, cat_covs=None, n_samples=1):
        if not _is_csr(x) or not self._csr_supported():
            x = x.to_dense() if _is_csr(x) else x
            out = super()._regular_inference(x, batch_index, cont_covs, cat_covs, n_samples)
            if self.use_observed_lib_size:  # a cell without counts: log(1), not log(0) = -inf
                out[LIBRARY_KEY] = out[LIBRARY_KEY].clamp(min=0.0)
            return out
        crow, row, col, val = csr_entries(x)
        n_cells = x.shape[0]
        totals = torch.zeros(n_cells, dtype=val.dtype, device=val.device).index_add_(0, row, val)
        # a cell without counts gets log(1), not log(0) = -inf (which a Poisson refuses)
        library = torch.log(totals.clamp(min=1.0)).unsqueeze(1)
        dense_inputs = [cont_covs] if cont_covs is not None and self.encode_covariates else []
        if cat_covs is not None and self.encode_covariates:
            categorical_input = torch.split(cat_covs, 1, dim=1)
        else:
            categorical_input = ()
        qz, z = encode_csr(
            self.z_encoder,
            (crow, row, col, torch.log1p(val)),
            tuple(x.shape),
            dense_inputs,
            batch_index,
            *categorical_input,
        )
        if n_samples > 1:
            z = self.z_encoder.z_transformation(qz.sample((n_samples,)))
            library = library.unsqueeze(0).expand((n_samples, library.size(0), library.size(1)))
        return {
            Z_KEY: z,
            QZ_KEY: qz,
            QL_KEY: None,
            LIBRARY_KEY: library,
        }

    def generative(self, *args, transform_batch=None, **kwargs):
        if (
            self.gene_likelihood in ("nb", "poisson")
            and self.batch_representation != "embedding"
            and self.dispersion != "gene-cell"
        ):
            return self._generative_no_zi(*args, transform_batch=transform_batch, **kwargs)
        out = super().generative(*args, transform_batch=transform_batch, **kwargs)
        px = out[PX_KEY]
        if type(px) is NegativeBinomial:
            out[PX_KEY] = SparseNegativeBinomial.from_scvi(px)
        return out

    def _generative_no_zi(
        self,
        z,
        library,
        batch_index,
        cont_covs=None,
        cat_covs=None,
        size_factor=None,
        y=None,
        transform_batch=None,
    ):
        """scvi-tools' ``generative`` for NB/Poisson without the unused zero-inflation head."""
        if cont_covs is None:
            decoder_input = z
        elif z.dim() != cont_covs.dim():
            decoder_input = torch.cat([z, cont_covs.unsqueeze(0).expand(z.size(0), -1, -1)], dim=-1)
        else:
            decoder_input = torch.cat([z, cont_covs], dim=-1)
        categorical_input = torch.split(cat_covs, 1, dim=1) if cat_covs is not None else ()
        if transform_batch is not None:
            batch_index = torch.ones_like(batch_index) * transform_batch
        if not self.use_size_factor_key:
            size_factor = library
        decoder = self.decoder
        covariates = (batch_index, *categorical_input)
        if decoder_input.dim() == 2:
            fc = decoder.px_decoder
            covs = one_hots(fc, covariates, decoder_input.dtype)
            hidden = fc_forward(fc, decoder_input, covs)
        else:  # several posterior samples: scvi-tools' layers expand the covariates
            hidden = decoder.px_decoder(decoder_input, *covariates)
        px_scale = decoder.px_scale_decoder(hidden)
        px_rate = torch.exp(size_factor) * px_scale
        if self.dispersion == "gene-label":
            one_hot = torch.nn.functional.one_hot(y.squeeze(-1), self.n_labels)
            px_r = torch.nn.functional.linear(one_hot.to(self.px_r.dtype), self.px_r)
        elif self.dispersion == "gene-batch":
            one_hot = torch.nn.functional.one_hot(batch_index.squeeze(-1), self.n_batch)
            px_r = torch.nn.functional.linear(one_hot.to(self.px_r.dtype), self.px_r)
        else:
            px_r = self.px_r
        px_r = torch.exp(px_r)
        if self.gene_likelihood == "nb":
            px = SparseNegativeBinomial(mu=px_rate, theta=px_r, scale=px_scale)
        else:
            px = Poisson(rate=px_rate, scale=px_scale)
        pl = None
        if not self.use_observed_lib_size:
            means, variances = self._compute_local_library_params(batch_index)
            pl = Normal(means, variances.sqrt())
        pz = Normal(torch.zeros_like(z), torch.ones_like(z), validate_args=False)
        return {PX_KEY: px, PL_KEY: pl, PZ_KEY: pz}

    def loss(self, tensors, inference_outputs, generative_outputs, kl_weight=1.0) -> LossOutput:
        x = tensors[REGISTRY_KEYS.X_KEY]
        px = generative_outputs[PX_KEY]
        plain_nb = type(px) in (NegativeBinomial, SparseNegativeBinomial)  # not ZINB (a subclass)
        if _is_csr(x) and plain_nb and _per_gene(px.theta) is not None:
            out = self._csr_nb_loss(tensors, px, inference_outputs, generative_outputs, kl_weight)
        else:
            if _is_csr(x):
                tensors = {**tensors, REGISTRY_KEYS.X_KEY: x.to_dense()}
            out = super().loss(tensors, inference_outputs, generative_outputs, kl_weight)
        if self.batch_mmd_weight > 0 and self.n_batch > 1:
            mmd = batch_mmd(inference_outputs[QZ_KEY].loc, tensors[REGISTRY_KEYS.BATCH_KEY])
            out.loss = out.loss + self.batch_mmd_weight * mmd
            out.extra_metrics["batch_mmd"] = mmd.detach()
        return out

    def _csr_nb_loss(self, tensors, px, inference_outputs, generative_outputs, kl_weight):
        """scvi-tools' loss, with the NB reconstruction term computed from CSR counts."""
        _, row, col, val = csr_entries(tensors[REGISTRY_KEYS.X_KEY])
        theta = _per_gene(px.theta)
        reconst_loss = -nb_log_lik_csr(px.mu, theta, row, col, val, px._eps)
        kl_z = kl_divergence(inference_outputs[QZ_KEY], generative_outputs[PZ_KEY]).sum(dim=-1)
        if self.use_observed_lib_size:
            kl_l = torch.zeros_like(kl_z)
        else:
            kl_l = kl_divergence(inference_outputs[QL_KEY], generative_outputs[PL_KEY]).sum(dim=1)
        loss = torch.mean(reconst_loss + kl_weight * kl_z + kl_l)
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconst_loss,
            kl_local={KL_L_KEY: kl_l, KL_Z_KEY: kl_z},
            extra_metrics=self._autotune_payload(tensors, inference_outputs),
        )

    def _autotune_payload(self, tensors, inference_outputs) -> dict:
        if not self.extra_payload_autotune:
            return {}
        return {
            "z": inference_outputs["z"],
            "batch": tensors[REGISTRY_KEYS.BATCH_KEY],
            "labels": tensors[REGISTRY_KEYS.LABELS_KEY],
        }
