"""The drug-response network: an expression encoder shared by bulk lines and single cells.

Each ensemble member is an encoder (``scvi.nn.FCLayers``: linear, layer norm, ReLU,
dropout) from the model's genes to a latent code, and a linear multi-task head from the code
to every drug's standardised response. With ``ridge_alpha`` set, each member also has a
*wide* path (wide & deep): a ridge regression from the standardised genes straight to the
drugs, fitted in closed form on the member's lines (:meth:`DrugResponseModule.set_ridge`),
and the member predicts the mean of its deep and its ridge predictions. The two learners
err differently (the deep part fits interactions and is aligned to the target cells; the
ridge is the strong linear baseline on the line-level signal, such as a line's overall
sensitivity), so their mean is better than either in bulk cross-validation. The deep part
is trained on the responses, not on the ridge's residuals: fitted jointly, the deep part
takes most of the signal and the mix was worse than either alone. Members differ in
initialisation and in the cell lines they leave out (one fold each), which gives every line
a held-out prediction to calibrate the sensitive probability with.

Inputs are profiles on a common scale across the model's genes (normal quantiles of
within-profile ranks, or z-scores; see :func:`scdl.data.profiles_from_counts`); the module
standardises each gene with the bulk lines' mean and sd (buffers, saved with the weights)
and, while training, adds Gaussian noise to them: a regulariser that matters with a few
hundred lines and thousands of genes, and one that also makes the encoder tolerant of the
noisier single-cell profiles.

Training loss: masked mean squared error over measured (non-NaN) line x drug entries, on
per-drug standardised responses, plus ``mmd_weight`` x the maximum mean discrepancy between
the latent codes of a sample of target cells and of a reference sample of bulk lines in the
same minibatch (domain alignment, as in scDEAL's DaNN). The reference lines are drawn with
probabilities that make them resemble the target cells (the model class chooses them), so
that target cells drawn from a few cell lines or one tissue are aligned to comparable lines
rather than spread over every tissue in the bulk panel (label shift). The TrainingPlan's KL
warm-up weight ramps the MMD term up, so the encoder first learns the task, then aligns.
"""

from __future__ import annotations

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import FCLayers

from ._mmd import batch_mmd
from ._ridge import fit_masked_ridge

#: registry key of the cell lines x drugs response table
RESPONSE_KEY = "drug_response"
#: minibatch key of a random sample of target cells' profiles (added by the data loader)
TARGET_X_KEY = "scdl_target_x"
#: minibatch key of bulk profiles drawn to resemble the target cells (the MMD's reference)
REFERENCE_X_KEY = "scdl_reference_x"
#: what a member predicts: network and ridge averaged, the ridge alone, the network alone
PREDICTIONS = ("wide_deep", "wide", "deep")
#: minibatch key of each line's fold: the ensemble member that does not train on it
FOLD_KEY = "scdl_fold"


class _Member(torch.nn.Module):
    def __init__(self, n_input: int, n_drugs: int, n_hidden: int, n_latent: int, dropout: float):
        super().__init__()
        self.encoder = FCLayers(
            n_in=n_input,
            n_out=n_latent,
            n_layers=2,
            n_hidden=n_hidden,
            dropout_rate=dropout,
            use_batch_norm=False,
            use_layer_norm=True,
            use_activation=True,
        )
        self.head = torch.nn.Linear(n_latent, n_drugs)


class DrugResponseModule(BaseModuleClass):
    """Ensemble of encoders + multi-task heads predicting standardised drug responses.

    Parameters
    ----------
    n_input
        Number of genes.
    n_drugs
        Number of drugs (outputs).
    n_hidden
        Units of the encoder's hidden layer.
    n_latent
        Units of the latent code (the encoder's output, aligned between domains).
    dropout_rate
        Dropout after each encoder layer.
    input_noise
        Standard deviation of the Gaussian noise added to the standardised genes in training.
    n_ensemble
        Ensemble members; each leaves out one fold of the lines when ``n_ensemble > 1``.
    mmd_weight
        Weight of the MMD between bulk and target latent codes; ``0`` turns alignment off.
    ridge_alpha
        Penalty of the wide path's ridge regressions, in scikit-learn's units, or several,
        chosen per drug by leave-one-out error; ``None``: no wide path (the deep part alone).
    prediction
        ``"wide_deep"``: the mean of the network and the ridge; ``"wide"``: the ridge alone
        (no network is built); ``"deep"``: the network alone (no ridge).
    """

    def __init__(
        self,
        n_input: int,
        n_drugs: int,
        *,
        n_hidden: int = 1024,
        n_latent: int = 256,
        dropout_rate: float = 0.5,
        input_noise: float = 1.0,
        n_ensemble: int = 5,
        mmd_weight: float = 1.0,
        ridge_alpha: float | tuple[float, ...] | None = None,
        prediction: str = "wide_deep",
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r} is not one of {PREDICTIONS}.")
        if ridge_alpha is None or prediction == "deep":
            prediction, ridge_alpha = "deep", None
        self.prediction = prediction
        self.n_ensemble = int(n_ensemble)
        self.ridge_alpha = (
            None
            if ridge_alpha is None
            else float(ridge_alpha)
            if np.ndim(ridge_alpha) == 0
            else tuple(float(a) for a in ridge_alpha)
        )
        self.input_noise = float(input_noise)
        self.mmd_weight = float(mmd_weight)
        # filled from the training data by set_scaling(); saved with the weights
        self.register_buffer("gene_mean", torch.zeros(n_input))
        self.register_buffer("gene_scale", torch.ones(n_input))
        self.register_buffer("drug_mean", torch.zeros(n_drugs))
        self.register_buffer("drug_scale", torch.ones(n_drugs))
        self._member_args = (n_input, n_drugs, n_hidden, n_latent, dropout_rate)
        n_members = 0 if prediction == "wide" else self.n_ensemble
        self.members = torch.nn.ModuleList(_Member(*self._member_args) for _ in range(n_members))
        if self.ridge_alpha is not None:
            # each member's ridge (members x drugs x genes, members x drugs), on standardised
            # genes and responses; filled by set_ridge(), saved with the weights
            self.register_buffer("ridge_weight", torch.zeros(self.n_ensemble, n_drugs, n_input))
            self.register_buffer("ridge_bias", torch.zeros(self.n_ensemble, n_drugs))

    @property
    def device(self) -> torch.device:
        """The module's device, read from a buffer (a ridge-only module has no parameters)."""
        return self.gene_mean.device

    @torch.no_grad()
    def set_scaling(self, gene_mean, gene_scale, drug_mean, drug_scale) -> None:
        """Per-gene and per-drug location/scale of the bulk training data."""
        for name, value in (
            ("gene_mean", gene_mean),
            ("gene_scale", gene_scale),
            ("drug_mean", drug_mean),
            ("drug_scale", drug_scale),
        ):
            buf = getattr(self, name)
            buf.copy_(torch.as_tensor(value, dtype=buf.dtype, device=buf.device))

    @torch.no_grad()
    def set_ridge(self, xs, y_std, lines_of_member) -> np.ndarray:
        """Fit each member's ridge in closed form, per drug on its measured lines.

        Parameters
        ----------
        xs
            Standardised genes of the bulk lines (lines x genes).
        y_std
            Standardised responses (lines x drugs), NaN where unmeasured.
        lines_of_member
            For each member, a boolean mask of the lines it trains on.

        Returns
        -------
        numpy.ndarray
            Each member's penalty per drug (members x drugs): ``ridge_alpha``, or with
            several, each drug's leave-one-out choice on the member's lines (the same solution
            as scikit-learn's ``Ridge``/``RidgeCV``, one factorisation per group of drugs
            measured on the same lines).
        """
        x = np.asarray(xs, dtype=np.float64)
        y = np.asarray(y_std, dtype=np.float64)
        alphas = self.ridge_alpha
        chosen = []
        for k, rows in enumerate(lines_of_member):
            rows = np.asarray(rows, dtype=bool)
            weight, bias, alpha = fit_masked_ridge(x[rows], y[rows], alphas)
            self.ridge_weight[k].copy_(torch.as_tensor(weight, dtype=self.ridge_weight.dtype))
            self.ridge_bias[k].copy_(torch.as_tensor(bias, dtype=self.ridge_bias.dtype))
            chosen.append(alpha)
        return np.stack(chosen)

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        """As torch's; weights saved before the wide path existed load as a deep-only model,
        and those saved with a network (before ``prediction`` existed) as wide & deep."""
        if self.ridge_alpha is not None and "ridge_weight" not in state_dict:
            self.ridge_alpha = None
            self.prediction = "deep"
            del self.ridge_weight, self.ridge_bias
        if len(self.members) == 0 and any(k.startswith("members.") for k in state_dict):
            self.members.extend(_Member(*self._member_args) for _ in range(self.n_ensemble))
            self.prediction = "wide_deep" if self.ridge_alpha is not None else "deep"
        return super().load_state_dict(state_dict, strict=strict, **kwargs)

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.gene_mean) / self.gene_scale
        if self.training and self.input_noise > 0:
            x = x + self.input_noise * torch.randn_like(x)
        return x

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "target_x": tensors.get(TARGET_X_KEY),
            "reference_x": tensors.get(REFERENCE_X_KEY),
        }

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        xs = self._standardise(x)
        return torch.stack([m.encoder(xs) for m in self.members])

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        target_x: torch.Tensor | None = None,
        reference_x: torch.Tensor | None = None,
    ) -> dict:
        """Latent codes of each member (members x profiles x n_latent): bulk lines, and in
        training target cells and the bulk reference they are aligned to."""
        out = {"z": self._encode(x)}
        if target_x is not None:
            out["z_target"] = self._encode(target_x)
            out["z_reference"] = out["z"] if reference_x is None else self._encode(reference_x)
        return out

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {"z": inference_outputs["z"]}

    @auto_move_data
    def generative(self, z: torch.Tensor) -> dict:
        """Standardised responses of each member's deep part (members x profiles x drugs)."""
        return {"y": torch.stack([m.head(z[k]) for k, m in enumerate(self.members)])}

    def _ridge(self, x: torch.Tensor, drugs: list[int] | None = None) -> torch.Tensor:
        """Each member's ridge prediction, standardised (members x profiles x drugs), for
        the drugs at positions ``drugs`` (all when ``None``)."""
        xs = self._standardise(x)  # called in eval mode: no input noise
        weight, bias = self.ridge_weight, self.ridge_bias
        if drugs is not None:  # the product's cost is per drug: only those asked for
            weight, bias = weight[:, drugs], bias[:, drugs]
        return torch.einsum("pg,kdg->kpd", xs, weight) + bias[:, None]

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Masked MSE over measured entries (each member without its fold) + ramped MMD."""
        y = tensors[RESPONSE_KEY]
        measured = ~torch.isnan(y)
        y_std = torch.where(measured, (y - self.drug_mean) / self.drug_scale, torch.zeros_like(y))
        sq = (generative_outputs["y"] - y_std).pow(2) * measured  # members x lines x drugs
        weight = torch.ones(sq.shape[:2], device=y.device, dtype=y.dtype)
        fold = tensors.get(FOLD_KEY)
        if fold is not None and self.n_ensemble > 1:
            ks = torch.arange(self.n_ensemble, device=y.device).view(-1, 1)
            weight = (fold.view(1, -1).long() != ks).to(y.dtype)
        per_member = (sq.sum(-1) * weight).sum(-1) / (measured.sum(-1) * weight).sum(-1).clamp_min(
            1
        )
        loss = per_member.sum()
        extra = {"mse": per_member.mean().detach()}
        z_target = inference_outputs.get("z_target")
        if z_target is not None and self.mmd_weight > 0:
            z = inference_outputs["z_reference"]
            domain = torch.cat([torch.zeros(z.shape[1]), torch.ones(z_target.shape[1])])
            domain = domain.to(z.device).long()
            mmd = torch.stack(
                [batch_mmd(torch.cat([z[k], z_target[k]]), domain) for k in range(z.shape[0])]
            ).sum()
            loss = loss + self.mmd_weight * kl_weight * mmd
            extra["mmd"] = mmd.detach() / z.shape[0]
        per_line = (sq.sum(-1) * weight).sum(0) / weight.sum(0).clamp_min(1)
        return LossOutput(loss=loss, reconstruction_loss=per_line, extra_metrics=extra)

    @torch.inference_mode()
    def member_predictions(self, x: torch.Tensor, drugs: list[int] | None = None) -> torch.Tensor:
        """Each member's responses in the table's units (members x profiles x drugs), for the
        drugs at positions ``drugs`` (all when ``None``)."""
        scale, mean = self._drug_stats(drugs)
        return self.predict_std(x, average=False, drugs=drugs) * scale + mean

    def predict_std(
        self, x: torch.Tensor, *, average: bool = True, drugs: list[int] | None = None
    ) -> torch.Tensor:
        """Standardised responses, averaged over members unless ``average=False``, for the
        drugs at positions ``drugs`` (all when ``None``).

        Differentiable (used for gene attributions); call in eval mode.
        """
        if self.prediction == "wide":
            y = self._ridge(x, drugs)
        else:
            y = self.generative(self.inference(x)["z"])["y"]
            if drugs is not None:
                y = y[..., drugs]
        if self.prediction == "wide_deep":
            # wide & deep: the mean of the deep and the ridge prediction
            y = 0.5 * (y + self._ridge(x, drugs))
        return y.mean(0) if average else y

    def predict(self, x: torch.Tensor, drugs: list[int] | None = None) -> torch.Tensor:
        """Ensemble-mean responses in the table's units (profiles x drugs), for the drugs at
        positions ``drugs`` (all when ``None``); differentiable."""
        scale, mean = self._drug_stats(drugs)
        return self.predict_std(x, drugs=drugs) * scale + mean

    def _drug_stats(self, drugs: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        if drugs is None:
            return self.drug_scale, self.drug_mean
        return self.drug_scale[drugs], self.drug_mean[drugs]

    def sample(self, *args, **kwargs):
        raise NotImplementedError("The drug-response module is not generative.")
