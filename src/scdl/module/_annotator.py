"""The network of :class:`scdl.models.CellTypeTransformer`: a small transformer over gene tokens.

A cell becomes a sequence of tokens:

* one token per gene among the cell's ``n_tokens`` most over-expressed genes (expression
  relative to the reference's mean and spread of that gene, as Geneformer ranks genes by
  expression normalised across the corpus): the token is the gene's identity embedding plus
  an encoding of its (continuous) expression value;
* a CLS token that starts from a linear summary of the whole profile (every vocabulary gene),
  so genes outside the top list still count, and which the classification head reads.

The logits add a linear path (``linear_head``; "wide and deep"): a logistic regression on
the centred log-normalised expression of every gene, a strong annotator on its own
(CellTypist's approach). The model class fits it first (scikit-learn, exactly) and freezes
it; the transformer is then trained on top of it, so it learns what the linear classifier
misses; once held-out cells have calibrated the Unknown call, it is refitted on all cells.
At prediction the transformer's logits count ``transformer_weight`` (0.5) times: the average
of the linear model and the linear + transformer model, which shrinks the transformer's fit
to the reference (measured in ``benchmarks/annotation.py``).

The encoder is a pre-norm transformer on PyTorch's ``scaled_dot_product_attention``; its last
layer updates only the CLS token (the head reads nothing else), which halves inference cost.
Everything is differentiable in the expression values and the token choice can be held fixed,
so integrated gradients along ``alpha * x`` attribute a prediction to genes.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._annotator_buffers import check_saved_buffers

#: the reference sketch's buffers and their number of dimensions
SKETCH_BUFFERS = {
    "sketch_loadings": 2,
    "sketch_center": 1,
    "sketch_cells": 3,
    "sketch_depth": 1,
    "sketch_composition": 1,
    "sketch_labels": 1,
    "sketch_moments": 3,
    "sketch_level_moments": 4,
}
#: a new id for every reference sample a module stores (loaded or set)
_SAMPLE_IDS = itertools.count()
#: a sample of reference cells kept for a query lacking genes (their counts over the vocabulary
#: as CSR, and their label codes): the linear path is refitted on it to the genes such a query
#: holds (:mod:`scdl.models._refit`); dtypes of the buffers
SAMPLE_BUFFERS = {
    "sample_indptr": "int64",
    "sample_indices": "int32",
    "sample_counts": "float32",
    "sample_labels": "int64",
}
#: the reference types' prototypes, profiles of their states (:mod:`scdl.models._prototypes`):
#: standardised mean profiles (prototypes x genes) and each one's type code; dtypes
PROTOTYPE_BUFFERS = {"prototype_profiles": "float32", "prototype_types": "int64"}


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + feed-forward block; ``cls_only`` updates only token 0."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dim_feedforward: int,
        dropout: float,
        cls_only: bool = False,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
        self.n_heads, self.cls_only, self.dropout = n_heads, cls_only, dropout
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, dim_feedforward),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim_feedforward, d_model),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        n, length, d = x.shape
        h = self.norm1(x)
        if self.cls_only:  # keys and values of every token, the query of token 0 only
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(h[:, :1], w[:d], b[:d]).view(n, 1, self.n_heads, -1).transpose(1, 2)
            k, v = (
                F.linear(h, w[d:], b[d:])
                .view(n, length, 2, self.n_heads, d // self.n_heads)
                .permute(2, 0, 3, 1, 4)
            )
            x = x[:, :1]
        else:
            q, k, v = (
                self.qkv(h)
                .view(n, length, 3, self.n_heads, d // self.n_heads)
                .permute(2, 0, 3, 1, 4)
            )
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(n, -1, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class CellTypeTransformerModule(nn.Module):
    """Transformer cell-type classifier over gene tokens.

    Parameters
    ----------
    n_genes
        Vocabulary size (the model's genes).
    n_labels
        Number of cell types.
    n_tokens
        Gene tokens per cell (its most over-expressed genes).
    d_model, n_heads, n_layers, dim_feedforward
        Transformer size.
    dropout
        Dropout in the transformer and on the CLS features.
    gene_dropout
        Fraction of genes hidden per cell during training, so predictions rest on many genes
        and survive queries that lack some or shift a few (e.g. a stimulation).
    linear_head
        Add a (fitted, frozen) linear classifier on the whole profile to the logits.
    transformer_weight
        Weight of the transformer's logits at prediction when ``linear_head`` (1 in training).
    """

    logits = True  # read by scvi-tools' ClassifierTrainingPlan

    def __init__(
        self,
        n_genes: int,
        n_labels: int,
        *,
        n_tokens: int = 32,
        d_model: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        dim_feedforward: int = 64,
        dropout: float = 0.1,
        gene_dropout: float = 0.3,
        linear_head: bool = True,
        transformer_weight: float = 0.5,
    ):
        super().__init__()
        self.transformer_weight = float(transformer_weight)
        self.n_genes, self.n_labels = n_genes, n_labels
        self.n_tokens = min(n_tokens, n_genes)
        self.gene_dropout = gene_dropout
        # reference statistics of log1p(CP10k) per gene (set from the training data)
        self.register_buffer("gene_mean", torch.zeros(n_genes))
        self.register_buffer("gene_std", torch.ones(n_genes))
        # calibration for "Unknown" calls (set after training, on held-out reference cells)
        self.register_buffer("centroids", torch.zeros(n_labels, n_genes))
        self.register_buffer("novelty_threshold", torch.full((n_labels,), float("inf")))
        self.register_buffer("confidence_threshold", torch.tensor(0.0))
        # reference sketch of the Unknown call's mixing check (scdl.models._mixing), set after
        # training; empty in models saved before it existed
        for name, ndim in SKETCH_BUFFERS.items():
            self.register_buffer(name, torch.zeros((0,) * ndim))
        for name, dtype in SAMPLE_BUFFERS.items():  # the reference sample, also set after it
            self.register_buffer(name, torch.zeros(0, dtype=getattr(torch, dtype)))
        self.register_buffer("prototype_profiles", torch.zeros(0, n_genes))  # and prototypes
        self.register_buffer("prototype_types", torch.zeros(0, dtype=torch.int64))
        self.sample_id = next(_SAMPLE_IDS)

        self.gene_embedding = nn.Embedding(n_genes, d_model)
        self.value_encoder = nn.Sequential(nn.Linear(1, 16), nn.GELU(), nn.Linear(16, d_model))
        self.summary = nn.Linear(n_genes, d_model)
        self.cls = nn.Parameter(torch.zeros(d_model))
        self.mask_value = nn.Parameter(torch.zeros(d_model))  # replaces a masked value (pretrain)
        self.layers = nn.ModuleList(
            TransformerBlock(d_model, n_heads, dim_feedforward, dropout, cls_only=False)
            for _ in range(n_layers - 1)
        )
        self.cls_layer = TransformerBlock(d_model, n_heads, dim_feedforward, dropout, cls_only=True)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, n_labels))
        self.linear = nn.Linear(n_genes, n_labels) if linear_head else None
        self.value_head = nn.Linear(d_model, 1)  # masked-expression pretraining
        nn.init.normal_(self.gene_embedding.weight, std=0.02)
        nn.init.normal_(self.cls, std=0.02)

    def set_sketch(self, **arrays) -> None:
        """Store the reference sketch (``SKETCH_BUFFERS``: their new sizes replace the old)."""
        for name, value in arrays.items():
            if name not in SKETCH_BUFFERS:
                raise KeyError(f"{name!r} is not a sketch buffer ({list(SKETCH_BUFFERS)}).")
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32).to(self.device))

    def set_reference_sample(self, counts, labels) -> None:
        """Store a sample of reference cells: ``counts`` (cells x vocabulary, scipy sparse or
        dense) and their label codes (``SAMPLE_BUFFERS``); no cells remove it."""
        from scipy import sparse

        counts = sparse.csr_matrix(counts, dtype="float32")
        if counts.shape[1] != self.n_genes or counts.shape[0] != len(labels):
            raise ValueError(
                f"the sample must be cells x {self.n_genes} genes with one label per cell, got "
                f"{counts.shape} and {len(labels)} labels."
            )
        labels = np.asarray(labels)
        values = {
            "sample_indptr": counts.indptr,
            "sample_indices": counts.indices,
            "sample_counts": counts.data,
            "sample_labels": labels,
        }
        for name, dtype in SAMPLE_BUFFERS.items():
            tensor = torch.from_numpy(np.ascontiguousarray(values[name], dtype=dtype))
            self.register_buffer(name, tensor.to(self.device))
        self.sample_id = next(_SAMPLE_IDS)  # what a refit fitted on it is cached under

    def set_prototypes(self, profiles, types) -> None:
        """Store the reference types' prototypes (``PROTOTYPE_BUFFERS``: the new number of
        prototypes replaces the old)."""
        profiles = torch.as_tensor(np.asarray(profiles, dtype=np.float32))
        types = torch.as_tensor(np.asarray(types, dtype=np.int64))
        if profiles.ndim != 2 or profiles.shape[1] != self.n_genes or len(types) != len(profiles):
            raise ValueError(
                f"prototypes must be (prototypes x {self.n_genes} genes) with one type each, got "
                f"{tuple(profiles.shape)} and {len(types)} types."
            )
        if len(types) and (int(types.min()) < 0 or int(types.max()) >= self.n_labels):
            raise ValueError(f"prototype types must be label codes 0-{self.n_labels - 1}.")
        self.register_buffer("prototype_profiles", profiles.to(self.device))
        self.register_buffer("prototype_types", types.to(self.device))

    def prototypes(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored prototypes as NumPy (profiles, type codes); none in a model saved before
        them."""
        return (
            self.prototype_profiles.detach().cpu().numpy(),
            self.prototype_types.detach().cpu().numpy(),
        )

    def reference_sample(self):
        """The stored reference cells as (CSR counts, label codes); ``None`` in a model saved
        without them."""
        from scipy import sparse

        if self.sample_labels.numel() == 0:
            return None
        counts = sparse.csr_matrix(
            (
                self.sample_counts.cpu().numpy(),
                self.sample_indices.cpu().numpy(),
                self.sample_indptr.cpu().numpy(),
            ),
            shape=(self.sample_labels.numel(), self.n_genes),
        )
        return counts, self.sample_labels.cpu().numpy()

    def sketch(self) -> dict:
        """The reference sketch as NumPy arrays (empty in a model saved before it)."""
        return {name: getattr(self, name).detach().cpu().numpy() for name in SKETCH_BUFFERS}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the sketch's size is the saved one, whatever the module was built with; a file saved
        # before the sketch existed has none (the mixing check is then skipped), one saved
        # before the reference sample none of it (no refit for a query lacking genes); sizes
        # taken from the file are checked first
        check_saved_buffers(state_dict, prefix, n_genes=self.n_genes, n_labels=self.n_labels)
        for name, ndim in SKETCH_BUFFERS.items():
            key = prefix + name
            if key in state_dict:
                self.register_buffer(name, torch.empty_like(state_dict[key], device=self.device))
            else:
                state_dict[key] = torch.zeros((0,) * ndim)
        for name, dtype in SAMPLE_BUFFERS.items():  # the same for the reference sample
            key = prefix + name
            if key in state_dict:
                self.register_buffer(name, torch.empty_like(state_dict[key], device=self.device))
            else:
                state_dict[key] = torch.zeros(0, dtype=getattr(torch, dtype))
        empty = {"prototype_profiles": (0, self.n_genes), "prototype_types": (0,)}
        for name, dtype in PROTOTYPE_BUFFERS.items():  # and the prototypes
            key = prefix + name
            if key in state_dict:
                self.register_buffer(name, torch.empty_like(state_dict[key], device=self.device))
            else:
                state_dict[key] = torch.zeros(empty[name], dtype=getattr(torch, dtype))
        self.sample_id = next(_SAMPLE_IDS)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.cls.device

    # --- input -------------------------------------------------------------------------------
    @staticmethod
    def log_normalize(x: torch.Tensor) -> torch.Tensor:
        """log1p of counts per 10,000 (over the vocabulary genes)."""
        return torch.log1p(x / x.sum(1, keepdim=True).clamp(min=1.0) * 1e4)

    def centre(self, x_log: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Input of the linear path: log expression minus the reference mean, not scaled.

        Not divided by the reference's spread: a gene that barely varies in the reference
        (an interferon gene in control cells, say) would be amplified, and a condition shift
        moves exactly such genes (benchmarks/README.md compares the two inputs).
        """
        x = x_log - self.gene_mean
        return x if present is None else x * present

    def standardize(self, x_log: torch.Tensor) -> torch.Tensor:
        return ((x_log - self.gene_mean) / self.gene_std).clamp(-10.0, 10.0)

    def select(
        self, x_log: torch.Tensor, hidden: torch.Tensor | None = None, z: torch.Tensor | None = None
    ):
        """Gene tokens of each cell: its ``n_tokens`` most over-expressed visible genes.

        Returns the gene ids (cells x n_tokens) and a padding mask for cells expressing fewer
        genes. Attributions keep this choice fixed along the path ``alpha * x_log``.
        """
        z = self.standardize(x_log) if z is None else z
        score = z.masked_fill(x_log <= 0, float("-inf"))
        if hidden is not None:
            score = score.masked_fill(hidden, float("-inf"))
        top, idx = torch.topk(score, self.n_tokens, dim=1)
        return idx, torch.isinf(top)

    def tokens(
        self,
        x_log: torch.Tensor,
        present: torch.Tensor | None = None,
        value_mask: torch.Tensor | None = None,
        selection: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """Token embeddings (cells x (1 + n_tokens) x d), padding mask and token values.

        ``present`` (genes) marks vocabulary genes the data holds; absent genes take the
        reference mean in the summary and are never tokens. ``value_mask`` (cells x n_tokens)
        hides the values of some tokens (masked-expression pretraining). ``selection``
        fixes the tokens (gene attributions).
        """
        z = self.standardize(x_log)
        hidden = None
        if present is not None:
            hidden = ~present.to(torch.bool).expand_as(z)
        if self.training and self.gene_dropout > 0:
            drop = torch.rand_like(z) < self.gene_dropout
            hidden = drop if hidden is None else hidden | drop
        idx, pad = self.select(x_log, hidden, z) if selection is None else selection
        values = torch.gather(z, 1, idx).masked_fill(pad, 0.0)
        if value_mask is not None:
            hidden_vals = torch.zeros_like(z, dtype=torch.bool).scatter(1, idx, value_mask)
            hidden = hidden_vals if hidden is None else hidden | hidden_vals
        z_summary = z if hidden is None else z.masked_fill(hidden, 0.0)
        value_emb = self.value_encoder(values.unsqueeze(-1))
        if value_mask is not None:
            value_emb = torch.where(value_mask.unsqueeze(-1), self.mask_value, value_emb)
        tok, key_pad = self._assemble(idx, value_emb, pad, self.summary(z_summary))
        return tok, key_pad, values, z_summary

    def _assemble(self, idx, value_emb, pad, summary):
        """Sequence [CLS, gene tokens] and its padding mask; ``summary`` is ``self.summary(z)``."""
        gene_tok = self.gene_embedding(idx) + value_emb
        cls_tok = (self.cls + summary / self.n_genes**0.5).unsqueeze(1)
        key_pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)
        return torch.cat([cls_tok, gene_tok], dim=1), key_pad

    def _logits(self, emb: torch.Tensor, linear: torch.Tensor | None) -> torch.Tensor:
        """The transformer's logits plus the linear path's, if any; the transformer's count
        ``transformer_weight`` times at prediction (see the module notes)."""
        logits = self.head(emb)
        if linear is None:
            return logits
        return (logits if self.training else logits * self.transformer_weight) + linear

    def _csr(self, crow, col, values) -> torch.Tensor:
        """A (cells x genes) sparse CSR matrix over this minibatch's non-zeros."""
        with warnings.catch_warnings():  # torch flags sparse CSR as beta; indices are ours
            warnings.filterwarnings(
                "ignore", message="Sparse CSR tensor support", category=UserWarning
            )
            return torch.sparse_csr_tensor(
                crow,
                col,
                values,
                size=(crow.numel() - 1, self.n_genes),
                device=values.device,
                check_invariants=False,
            )

    def _encode(self, tok, key_pad) -> torch.Tensor:
        """The CLS token's features after every layer."""
        bias = self._attn_bias(key_pad)
        for layer in self.layers:
            tok = layer(tok, bias)
        return self.norm(self.cls_layer(tok, bias)[:, 0])

    @staticmethod
    def _attn_bias(key_pad: torch.Tensor) -> torch.Tensor | None:
        """Additive attention mask hiding padding tokens (None when no cell needs padding)."""
        if not bool(key_pad.any()):
            return None
        bias = torch.zeros(key_pad.shape, dtype=torch.float32, device=key_pad.device)
        return bias.masked_fill(key_pad, float("-inf"))[:, None, None, :]

    # --- forward -----------------------------------------------------------------------------
    def features_log(self, x_log, present=None, selection=None):
        """CLS features, logits and the standardised profile (absent genes 0) of each cell."""
        tok, key_pad, _, z = self.tokens(x_log, present, selection=selection)
        emb = self._encode(tok, key_pad)
        # the linear path reads every measured gene, without gene dropout (it is fitted)
        linear = None if self.linear is None else self.linear(self.centre(x_log, present))
        return emb, self._logits(emb, linear), z

    def features(self, x: torch.Tensor, present: torch.Tensor | None = None):
        """CLS features, logits and standardised profile from raw counts (cells x genes)."""
        return self.features_log(self.log_normalize(x), present)

    def features_csr(self, crow, col, counts, present=None, centroids=None):
        """:meth:`features` from a CSR minibatch, at a cost in its non-zeros (inference).

        Equal to the dense path (eval mode): a gene a cell does not express has the standardised
        value ``z0 = -mean / sd`` of its gene, so the summary token and the dot products with
        the type centroids are ``z0``'s (once per gene) plus the non-zeros' departures from it,
        and the tokens are chosen among the non-zeros only. Returns the CLS features, logits,
        the dot products of each cell's standardised profile with ``centroids`` (cells x types)
        and that profile's norm, which give the novelty score without a dense matrix.
        """
        n_cells = crow.numel() - 1
        dev = counts.device
        lengths = crow[1:] - crow[:-1]
        row = torch.repeat_interleave(torch.arange(n_cells, device=dev), lengths)
        # dtypes given: a session whose default dtype is float64 made these Double
        lib = torch.zeros(n_cells, dtype=counts.dtype, device=dev).index_add_(0, row, counts)
        x_log = torch.log1p(counts / lib.clamp(min=1.0)[row] * 1e4)
        z0 = (-self.gene_mean / self.gene_std).clamp(-10.0, 10.0)
        if present is not None:  # absent genes: no non-zeros, 0 in the summary
            z0 = z0 * present
            keep = present.to(torch.bool)[col]
            if not bool(keep.all()):
                row, col, x_log = row[keep], col[keep], x_log[keep]
                lengths = torch.bincount(row, minlength=n_cells)
                crow = torch.cat([crow[:1], torch.cumsum(lengths, 0)])
        z_nz = ((x_log - self.gene_mean[col]) / self.gene_std[col]).clamp(-10.0, 10.0)
        # departures from z0 as a sparse (cells x genes) matrix: products cost its non-zeros
        delta = self._csr(crow, col, z_nz - z0[col])
        # tokens: top over-expressed among each cell's non-zeros
        pos = torch.arange(col.numel(), device=dev) - crow[:-1][row]
        width = max(int(lengths.max()) if n_cells else 0, self.n_tokens)
        score = torch.full((n_cells, width), float("-inf"), dtype=z_nz.dtype, device=dev)
        score[row, pos] = z_nz.masked_fill(x_log <= 0, float("-inf"))
        genes = torch.zeros((n_cells, width), dtype=torch.long, device=dev)
        genes[row, pos] = col
        top, j = torch.topk(score, self.n_tokens, dim=1)
        pad = torch.isinf(top)
        idx = torch.gather(genes, 1, j)
        values = top.masked_fill(pad, 0.0)
        summary = self.summary(z0) + delta @ self.summary.weight.T
        value_emb = self.value_encoder(values.unsqueeze(-1))
        emb = self._encode(*self._assemble(idx, value_emb, pad, summary))
        linear = None
        if self.linear is not None:  # centred log expression: -mean at zeros, + x_log at non-zeros
            mean = self.gene_mean if present is None else self.gene_mean * present
            linear = self.linear(-mean) + self._csr(crow, col, x_log) @ self.linear.weight.T
        logits = self._logits(emb, linear)
        c = self.centroids if centroids is None else centroids
        dots = z0 @ c.T + delta @ c.T
        sq = torch.full((n_cells,), float(z0 @ z0), dtype=z0.dtype, device=dev)
        sq = sq.index_add(0, row, z_nz**2 - z0[col] ** 2)
        return emb, logits, dots, sq.clamp(min=0.0).sqrt()

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (cells x labels) from raw counts (cells x vocabulary genes)."""
        return self.features(x, present)[1]

    def masked_value_loss(self, x: torch.Tensor, mask_fraction: float = 0.15) -> torch.Tensor:
        """Self-supervised loss: predict hidden token values from the rest of the cell."""
        value_mask = torch.rand(x.shape[0], self.n_tokens, device=x.device) < mask_fraction
        tok, key_pad, values, _ = self.tokens(self.log_normalize(x), value_mask=value_mask)
        value_mask = value_mask & ~key_pad[:, 1:]
        bias = self._attn_bias(key_pad)
        for layer in self.layers:
            tok = layer(tok, bias)
        out = tok[:, 1:]
        pred = self.value_head(out).squeeze(-1)
        n = value_mask.sum().clamp(min=1)
        return ((pred - values) ** 2 * value_mask).sum() / n
