"""Multi-device training: the VAE with Lightning's DDP, against one device, in one run.

``accelerator``, ``devices`` and ``strategy`` go straight to Lightning's ``Trainer``; scdl's
batch path gives every process its own equal share of each epoch (no sampler to wrap), and
per-epoch metrics are averaged across processes. Run it as a script (DDP starts one process
per device by re-running this command):

    python benchmarks/ddp.py --accelerator gpu --devices 2 --batch-size 1024   # 2 GPUs
    python benchmarks/ddp.py --accelerator cpu --devices 2                     # CPU (gloo)

It trains the same model once on one device and once on ``--devices`` devices, and prints
cells/s per epoch for both, the speed-up, and the final training ELBO of each (the two
should agree within a few percent: same data, same epochs, effective batch x devices).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

from _common import DATA, need

warnings.filterwarnings("ignore")


def train_once(args) -> dict | None:
    import anndata as ad
    import scvi
    import torch

    import scdl

    scvi.settings.seed = args.seed
    if args.data == "bundled":
        adata = scdl.datasets.kang_pbmc()
        batch_key = "sample"
    else:
        adata = ad.read_h5ad(need(DATA / "kang_pbmc_14k.h5ad"))
        batch_key = "condition"
    scdl.models.VAE.setup_anndata(adata, batch_key=batch_key)
    model = scdl.models.VAE(adata)
    t0 = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy if args.devices > 1 else "auto",
        train_size=1.0,
        enable_progress_bar=False,
    )
    seconds = time.perf_counter() - t0
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank != 0:
        return None
    z = model.get_latent_representation()
    return {
        "devices": args.devices,
        "cells": adata.n_obs,
        "epochs": args.epochs,
        "seconds": seconds,
        "cells_per_s_per_epoch": adata.n_obs * args.epochs / seconds,
        "final_elbo_train": float(model.history["elbo_train"].iloc[-1, 0]),
        "latent_finite": bool(torch.isfinite(torch.as_tensor(z)).all()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data", choices=["kang14k", "bundled"], default="kang14k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_single", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._single or os.environ.get("LOCAL_RANK") is not None:
        out = train_once(args)
        if out is not None:
            print("RESULT " + json.dumps(out), flush=True)
        return
    rows = []
    for devices in (1, args.devices):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--devices", str(devices), "--_single"]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        if res.returncode or not line:
            raise SystemExit(f"{devices} device(s) failed:\n{res.stderr[-4000:]}")
        rows.append(json.loads(line[-1][7:]))
    import pandas as pd

    df = pd.DataFrame(rows).set_index("devices")
    print(df.to_string(float_format=lambda v: f"{v:,.2f}"))
    one, many = df.iloc[0], df.iloc[-1]
    print(
        f"\n{args.devices} x {args.accelerator} ({args.strategy}) vs 1: cells/s "
        f"x{many.cells_per_s_per_epoch / one.cells_per_s_per_epoch:.2f}, final ELBO "
        f"{100 * (many.final_elbo_train / one.final_elbo_train - 1):+.2f}%"
    )


if __name__ == "__main__":
    main()
