"""Training speed: scdl VAE vs scvi-tools SCVI at equal architecture, batch size and epochs.

Kang 14k PBMCs x 2,000 HVGs (seurat_v3 on counts), CPU. Both models: 1 hidden layer of 128,
10 latent dims, NB likelihood, layer norm, batch = condition, batch size 128, same epochs,
no validation. scdl's batch-MMD term is off, so the two optimise the same objective.

    python benchmarks/speed.py --epochs 5
    python benchmarks/speed.py --accelerator gpu --batch-size 1024 --epochs 20   # one GPU
    python benchmarks/speed.py --accelerator gpu --quick   # batch 1024, 30 epochs, ~1-2 min

Cells/s are given over the whole ``train()`` call (Lightning's set-up included) and over the
epochs after the first ("steady"), which is what a long training sees; on a GPU, where an
epoch of 14k cells takes a fraction of a second, the two differ.
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import pandas as pd
import torch
from _common import DATA, hvg_subset, measure, need
from lightning.pytorch.callbacks import Callback

warnings.filterwarnings("ignore")

ARCH = {
    "n_hidden": 128,
    "n_latent": 10,
    "n_layers": 1,
    "gene_likelihood": "nb",
    "encode_covariates": True,
    "use_layer_norm": "both",
    "use_batch_norm": "none",
}


class EpochTimer(Callback):
    """Wall time of each training epoch (synchronised with the GPU at both ends)."""

    def __init__(self):
        self.seconds: list[float] = []

    def _now(self, pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = self._now(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(self._now(pl_module) - self._t0)


def breakdown(model, epoch_seconds: float, n_steps: int = 60, batch_size: int = 128) -> None:
    """Where a training step of the scdl VAE goes: data, forward, backward, optimiser, rest."""
    import time

    module = model.module
    module.train()
    dev = module.device
    # on a GPU, wait for the queued kernels before reading the clock (no-op on CPU)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    # the loader the model trains with (CSR minibatches, on the model's device)
    loader_cls = model._data_splitter_cls.data_loader_cls
    loader = loader_cls(model.adata_manager, batch_size=batch_size, shuffle=True)
    if hasattr(loader, "to"):
        loader = loader.to(dev)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3, eps=0.01, fused=True)
    data_part = "data (CSR rows -> minibatch" + (", on GPU)" if dev.type == "cuda" else ")")
    parts = dict.fromkeys(
        [data_part, "forward (incl. NB likelihood)", "backward", "optimiser (Adam)"], 0.0
    )
    names = list(parts)
    batches = iter(loader)
    for _ in range(n_steps):
        sync()
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:  # large batches: fewer than n_steps per epoch
            batches = iter(loader)
            batch = next(batches)
        batch = {k: v.to(dev) for k, v in batch.items()}
        sync()
        t1 = time.perf_counter()
        _, _, out = module(batch, loss_kwargs={"kl_weight": 1.0})
        sync()
        t2 = time.perf_counter()
        opt.zero_grad()
        out.loss.backward()
        sync()
        t3 = time.perf_counter()
        opt.step()
        sync()
        t4 = time.perf_counter()
        for name, dt in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[name] += dt / n_steps
    step = epoch_seconds / len(loader)
    parts["Lightning loop, logging, rest"] = max(step - sum(parts.values()), 0.0)
    print(
        f"\nwhere a scdl training step goes ({1000 * step:.1f} ms per step of {batch_size} cells):"
    )
    for name, dt in parts.items():
        print(f"  {name:32s} {1000 * dt:6.2f} ms  {100 * dt / step:5.1f}%")


def main() -> None:
    import scvi

    import scdl

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="default 5 (--quick on a GPU: 30)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="default 128 (--quick on a GPU: 1024)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--accelerator",
        default="auto",
        help="passed to both models' train (\"auto\": Lightning's choice)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run: on a GPU batch 1024 and 30 epochs; a 20-step breakdown",
    )
    args = p.parse_args()
    gpu = args.accelerator in ("gpu", "cuda") or (
        args.accelerator == "auto" and torch.cuda.is_available()
    )
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--accelerator gpu: torch sees no CUDA device on this machine.")
    if args.epochs is None:
        args.epochs = 30 if (args.quick and gpu) else 5
    if args.batch_size is None:
        args.batch_size = 1024 if (args.quick and gpu) else 128
    print(
        f"torch {torch.__version__}, scvi-tools {scvi.__version__}, "
        f"{torch.cuda.get_device_name() if gpu else 'CPU'}"
    )

    adata = ad.read_h5ad(need(DATA / "kang_pbmc_14k.h5ad"))
    adata = hvg_subset(adata, batch_key="condition")
    train = {
        "max_epochs": args.epochs,
        "batch_size": args.batch_size,
        "train_size": 1.0,
        "accelerator": args.accelerator,
        "enable_progress_bar": False,
        "plan_kwargs": {"n_epochs_kl_warmup": None},
    }

    def build(name, data):
        scvi.settings.seed = args.seed
        if name.startswith("scvi"):
            scvi.model.SCVI.setup_anndata(data, batch_key="condition")
            return scvi.model.SCVI(data, **ARCH)
        scdl.models.VAE.setup_anndata(data, batch_key="condition")
        return scdl.models.VAE(data, batch_mmd_weight=0.0, **ARCH)

    names = ("scvi-tools SCVI", "scdl VAE")
    # warm-up (imports, first Lightning run, allocator) so neither side pays it in the timing
    warm = adata[::5]
    warm = warm[:, (warm.X > 0).sum(0).A1 > 0]
    for name in names:
        build(name, warm.copy()).train(**{**train, "max_epochs": 1})
    rows = []
    for name in names:
        data = adata.copy()
        model = build(name, data)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        timer = EpochTimer()
        with measure() as m:
            model.train(**train, callbacks=[timer])
        elbo = float(model.history["elbo_train"].iloc[-1, 0])
        steady = timer.seconds[1:] or timer.seconds
        rows.append(
            {
                "model": name,
                "epochs": args.epochs,
                "seconds": m["seconds"],
                "cells_per_s": data.n_obs * args.epochs / m["seconds"],
                "steady_cells_per_s": data.n_obs * len(steady) / sum(steady),
                "final_train_elbo": elbo,
                "peak_MiB": m["peak_mib"],
            }
        )
        on_gpu = model.module.device.type == "cuda"
        if on_gpu:
            rows[-1]["peak_GPU_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    df = pd.DataFrame(rows).set_index("model")
    where = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(
        f"Kang 14k: {adata.n_obs} cells x {adata.n_vars} genes, batch {args.batch_size}, "
        f"{where}, torch threads {torch.get_num_threads()}"
    )
    print(df.to_string(float_format=lambda v: f"{v:.2f}"))
    s, r = df.loc["scdl VAE"], df.loc["scvi-tools SCVI"]
    print(
        f"\nscdl / scVI: cells/s x{s.cells_per_s / r.cells_per_s:.2f} (steady "
        f"x{s.steady_cells_per_s / r.steady_cells_per_s:.2f}), final ELBO "
        f"{100 * (s.final_train_elbo / r.final_train_elbo - 1):+.2f}%"
    )
    n_steps = 20 if args.quick else 60
    breakdown(model, s.seconds / args.epochs, n_steps=n_steps, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
