"""The ``scdl`` command line: thin wrappers around :mod:`scdl.tl`."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from functools import partial

from ._cli_demo import run_demo
from ._cli_files import (
    check_input_names,
    check_paths,
    copy_annotation,
    raw_as_adata,
    raw_as_layer,
    read_input,
    slash_free_columns,
)

#: the Python arguments the library's error messages name, as this command line's flags
_FLAGS = {
    "layer": "--layer",
    "batch_key": "--batch-key",
    "key_added": "--key-added",
    "max_epochs": "--max-epochs",
    "n_latent": "--n-latent",
    "n_top_genes": "--n-top-genes",
    "min_gene_overlap": "--min-gene-overlap",
    "prefix": "--prefix",
    "sha256": "--sha256",
}


def _as_flags(message: str) -> str:
    """An error of the Python API in the command line's terms: ``layer=None`` is leaving out
    ``--layer``, ``layer=`` is ``--layer``, ``n_top_genes=None`` is ``--n-top-genes 0``."""
    message = message.replace("pass `n_top_genes=None`", "pass `--n-top-genes 0`")
    message = re.sub(
        r"[Pp]ass `(\w+)=None`",
        lambda m: (
            f"{'L' if m[0][0] == 'P' else 'l'}eave out `{_FLAGS[m[1]]}`" if m[1] in _FLAGS else m[0]
        ),
        message,
    )
    message = re.sub(  # `layer='counts'` is `--layer counts`
        r"`(\w+)='([^'`]*)'`",
        lambda m: f"`{_FLAGS[m[1]]} {m[2]}`" if m[1] in _FLAGS else m[0],
        message,
    )
    message = re.sub(r"`(\w+)=`", lambda m: f"`{_FLAGS.get(m[1], m[1] + '=')}`", message)
    # a bare argument name, e.g. "before using it as `batch_key`"
    return re.sub(r"`(\w+)`", lambda m: f"`{_FLAGS[m[1]]}`" if m[1] in _FLAGS else m[0], message)


def _at_least_one(text: str, *, hint: str = "") -> int:
    """An integer >= 1 (``--n-latent``, ``--max-epochs``), refused by argparse before the
    input is read; ``hint`` follows the message."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}{hint}")
    return value


def _fraction(text: str) -> float:
    """A number in [0, 1] (``--min-gene-overlap``), refused by argparse before the input is
    read."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


def _seed(text: str) -> int:
    """An integer seed from 0 to 2**32 - 1 (``--seed``; numpy's range), refused by argparse
    before the input is read."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32 - 1, got {text!r}")
    return value


def _n_top_genes(text: str) -> int | None:
    """``--n-top-genes``: an integer >= 1, or 0 for every expressed gene (``None``)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"must be an integer >= 1 (or 0: every expressed gene), got {text!r}"
        )
    return value or None


#: ``--max-epochs``: leaving it out chooses the epochs from the number of cells
_max_epochs = partial(_at_least_one, hint=" (leave it out to choose from the number of cells)")


def _integrate(args: argparse.Namespace) -> int:
    import numpy as np

    import scdl

    # OUT, --save-model and IN were checked by main() before the heavy imports
    adata = read_input(args.input)
    check_input_names(adata, args.input)
    # input errors are said before "training ..." is printed: the batch column, the layer,
    # and values that a sample already shows are not counts (the full check runs in training)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"{args.input} holds {adata.n_obs} cells x {adata.n_vars} genes.")
    if args.batch_key is not None:
        scdl.data.check_categorical(adata, args.batch_key, arg="batch_key")
    raw_layer = args.layer == "raw" and "raw" not in adata.layers
    if raw_layer:
        raw_as_layer(adata)
    x = scdl.data.get_matrix(adata, args.layer)
    if not scdl.data.sampled_counts_ok(adata, args.layer):
        scdl.data.check_counts(adata, args.layer)
    if isinstance(x, np.ndarray) or hasattr(x, "nnz"):
        if not x.sum() > 0:  # scvi-tools cannot train on it
            raise ValueError(
                f"{args.input} holds no counts (every value of "
                f"{'X' if args.layer is None else repr(args.layer)} is 0)."
            )
    print(f"training the VAE (batch key: {args.batch_key or 'none'}) ...")
    model = scdl.tl.integrate(
        adata,
        batch_key=args.batch_key,
        layer=args.layer,
        key_added=args.key_added,
        n_latent=args.n_latent,
        n_top_genes=args.n_top_genes,
        max_epochs=args.max_epochs,
        random_state=args.seed,
        # a bar redrawn into a log file is one line of thousands of updates
        progress_bar=not args.quiet and sys.stdout.isatty(),
    )
    if args.cluster:
        scdl.tl.cluster(adata, use_rep=args.key_added)
        print(f"Leiden clusters in obs['scdl_cluster']: {adata.obs['scdl_cluster'].nunique()}")
    if raw_layer:
        del adata.layers["raw"]  # a copy of .raw's values, which the output keeps
    scdl.data.write_h5ad_atomic(adata, args.output)
    if args.save_model:
        model.save(args.save_model, overwrite=args.overwrite)
    print(f"wrote obsm[{args.key_added!r}] ({args.n_latent} dims) to {args.output}")
    return 0


def _annotate(args: argparse.Namespace) -> int:
    import numpy as np

    import scdl

    # OUT and IN were checked by main() before the heavy imports
    adata = read_input(args.input, quiet=args.quiet)
    check_input_names(adata, args.input)
    say = (lambda *_: None) if args.quiet else print
    say(f"annotating with {args.model!r} ...")
    model = scdl.pretrained.load(args.model, sha256=args.sha256, prefix=args.prefix)
    use_raw = args.layer == "raw" and "raw" not in adata.layers
    target = raw_as_adata(adata) if use_raw else adata  # .raw annotated with all its genes
    layer = args.layer
    x = scdl.data.get_matrix(target, layer)
    # every cell would be Unknown (or one forced type); NaN, negative or scaled values are
    # said by the counts check below (a scaled matrix can sum to 0 without being empty)
    zero = (x.count_nonzero() if hasattr(x, "count_nonzero") else np.count_nonzero(x)) == 0
    if adata.n_obs and zero:
        raise ValueError(
            f"{args.input} holds no counts (every value of "
            f"{'X' if args.layer is None else repr(args.layer)} is 0)."
        )
    import warnings

    with warnings.catch_warnings():  # its fix is Python's: this command renames them below
        warnings.filterwarnings("ignore", message=r"The model's cell types \[")
        scdl.tl.annotate(
            target,
            model=model,
            layer=layer,
            batch_key=args.batch_key,
            key_added=args.key_added,
            unknown=not args.no_unknown,
            min_gene_overlap=args.min_gene_overlap,
        )
    if use_raw:
        copy_annotation(target, adata, args.key_added)
    table = f"{args.key_added}_probabilities"
    slashed = slash_free_columns(adata, table)
    if slashed:
        warnings.warn(
            f"The model's cell types {slashed[:3]} contain '/', which .h5ad files cannot hold "
            f"in column names: their columns of obsm[{table!r}] are written with '|' instead "
            "(the calls in obs keep the names).",
            UserWarning,
            stacklevel=1,
        )
    scdl.data.write_h5ad_atomic(adata, args.output)
    counts = adata.obs[args.key_added].value_counts()
    say(f"wrote obs[{args.key_added!r}] to {args.output}:")
    say(counts[counts > 0].to_string())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scdl",
        description="Deep-learning models for single-cell data, on AnnData (.h5ad) files of\n"
        "raw counts. Each command calls the matching scdl.tl function and writes its\n"
        "results into the output .h5ad.",
        epilog="examples:\n"
        "  scdl demo -o scdl_demo\n"
        "  scdl integrate pbmc.h5ad --batch-key sample --cluster -o pbmc_scdl.h5ad\n"
        "  scdl annotate pbmc.h5ad --model pbmc_kang2018 -o pbmc_annotated.h5ad\n\n"
        "'scdl COMMAND --help' lists a command's options. Tutorials: the tutorials/ folder "
        "of the repository.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"scdl {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_integrate(sub)
    _add_annotate(sub)
    return p


def _add_demo(sub) -> None:
    d = sub.add_parser(
        "demo",
        help="integrate, cluster and annotate bundled Kang PBMC data; write .h5ad and figures",
        description="Runs scdl's main job on bundled real data (Kang 2018 PBMCs): VAE "
        "integration of 4 samples, Leiden clustering, scib-metrics vs PCA, then cell-type "
        "annotation of held-out cells with the shipped annotator, with gene attributions.",
    )
    d.add_argument(
        "-o", "--output", default="scdl_demo", help="output folder (default: %(default)s)"
    )
    d.add_argument(
        "--max-epochs", type=_max_epochs, default=None, help="training epochs (default: auto)"
    )
    d.add_argument("--seed", type=_seed, default=0, help="random seed (default: %(default)s)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=run_demo)


def _add_integrate(sub) -> None:
    i = sub.add_parser(
        "integrate",
        help="batch-correct an .h5ad of raw counts with the VAE",
        description="Train scdl's VAE on IN.h5ad (raw counts; highly variable genes are "
        "selected per batch) and write the batch-corrected latent space to obsm[KEY] of "
        "OUT.h5ad (scdl.tl.integrate); --cluster adds Leiden clusters in obs['scdl_cluster'].",
    )
    i.add_argument("input", metavar="IN.h5ad", help="input .h5ad with raw counts")
    i.add_argument("-o", "--output", metavar="OUT.h5ad", required=True, help="output .h5ad")
    i.add_argument("--batch-key", default=None, help="obs column of the batches")
    i.add_argument(
        "--layer", default=None, help="layer with raw counts, or 'raw' for .raw (default: X)"
    )
    i.add_argument(
        "--key-added", default="X_scdl", help="obsm key of the latent space (default: %(default)s)"
    )
    i.add_argument(
        "--n-latent",
        type=_at_least_one,
        default=10,
        help="latent dimensions (default: %(default)s)",
    )
    i.add_argument(
        "--n-top-genes",
        type=_n_top_genes,
        default=2000,
        help="highly variable genes trained on, 0 for every expressed gene (default: %(default)s)",
    )
    i.add_argument(
        "--max-epochs",
        type=_max_epochs,
        default=None,
        help="training epochs (default: chosen from the number of cells)",
    )
    i.add_argument("--seed", type=_seed, default=0, help="random seed (default: %(default)s)")
    i.add_argument("--cluster", action="store_true", help="also run Leiden on the latent space")
    i.add_argument("--save-model", default=None, help="folder to save the trained model")
    i.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUT.h5ad and model folder"
    )
    i.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=_integrate)


def _add_annotate(sub) -> None:
    a = sub.add_parser(
        "annotate",
        help="annotate cell types in an .h5ad of raw counts with a (pretrained) annotator",
        description="Predict cell types of IN.h5ad (raw counts, or log1p of normalised counts) "
        "with a pretrained annotator (name, folder or archive; see "
        "scdl.pretrained.available()) and write obs[KEY], obs[KEY_confidence], "
        "obs[KEY_unknown], obs[KEY_cluster_novelty], obs[KEY_cluster_reference_share], "
        "obsm[KEY_probabilities] and uns[KEY] to OUT.h5ad (see scdl.tl.annotate).",
    )
    a.add_argument(
        "input", metavar="IN.h5ad", help="input .h5ad with raw counts (or log1p-normalised)"
    )
    a.add_argument("-o", "--output", metavar="OUT.h5ad", required=True, help="output .h5ad")
    a.add_argument(
        "--model",
        default="pbmc_kang2018",
        help="annotator name, folder, archive or https:// URL of an archive (default: %(default)s)",
    )
    a.add_argument(
        "--sha256",
        default=None,
        help="checksum of the model's archive (required for a URL; checked when given)",
    )
    a.add_argument(
        "--prefix",
        default=None,
        help="the prefix a model in the --model folder was saved with (scvi-tools' `prefix`)",
    )
    a.add_argument("--overwrite", action="store_true", help="replace an existing OUT.h5ad")
    a.add_argument(
        "--layer",
        default=None,
        help="layer with raw counts, or 'raw' for .raw with all its genes (default: X)",
    )
    a.add_argument(
        "--key-added",
        default="scdl_cell_type",
        help="obs key of the cell types (default: %(default)s)",
    )
    a.add_argument(
        "--batch-key",
        default=None,
        help="obs column of samples that differ by chemistry or protocol: each is annotated as "
        "a query of its own (default: the file is one query)",
    )
    a.add_argument(
        "--min-gene-overlap",
        type=_fraction,
        default=0.5,
        help="smallest fraction of the model's genes the input must hold (default: %(default)s)",
    )
    a.add_argument(
        "--no-unknown",
        action="store_true",
        help="give every cell its most probable type (no 'Unknown' calls)",
    )
    a.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    a.set_defaults(func=_annotate)


def _version() -> str:
    import scdl

    return scdl.__version__


@contextlib.contextmanager
def _quiet_libraries():
    """Keep the terminal to scdl's own output and the progress bar, for the command only:
    ``main(argv)`` called from Python leaves the warning filters and loggers as they were."""
    import logging
    import warnings

    loggers = [
        logging.getLogger(name)
        for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    ]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # a wrong path is said before the imports below (about 10 s on a laptop core)
    status = _run(args, step=check_paths)
    if status:
        return status
    # imported before the quieting: a library's first import sets its own warning filters
    # and logger levels, which the quieting's restore on exit would discard for the session
    # (and Lightning's import reset the levels it had just lowered)
    import lightning.pytorch  # noqa: F401
    import scvi  # noqa: F401

    with _quiet_libraries(), _batch_job_io(args.command):
        import warnings

        def show(message, category, *_args, **_kwargs):
            # a warning as the command's own line, not Python's "path:line: ..." and source
            print(f"scdl {args.command}: warning: {_as_flags(str(message))}", file=sys.stderr)

        warnings.showwarning = show  # restored when _quiet_libraries' catch_warnings exits
        return _run(args)


@contextlib.contextmanager
def _batch_job_io(command: str):
    """Output and signals as a batch job (nohup, Slurm) needs them, restored on exit: stdout
    flushed line by line (block-buffered into a log, it stayed empty through hours of
    training and printed after the warnings), names a non-UTF-8 locale cannot encode written
    escaped (the step failed after writing its output), and SIGTERM (a job's time limit,
    scancel) exits through the cleanup (a partial output file stayed behind)."""
    import signal
    import threading

    out = sys.stdout
    saved = None
    if hasattr(out, "reconfigure"):  # a real text stream, not a notebook's or pytest's
        saved = {"line_buffering": out.line_buffering, "errors": out.errors}
        out.reconfigure(line_buffering=True, errors="backslashreplace")

    def terminate(signum, frame):
        print(f"scdl {command}: terminated", file=sys.stderr)
        raise SystemExit(128 + signum)

    previous = None
    # only over the default: a parent's "ignore SIGTERM" (trap '' TERM) or a handler of the
    # session's own stays in force
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if saved is not None:
            out.reconfigure(**saved)


def _run(args, *, step=None) -> int:
    """The command (or ``step``), with expected input problems reported in one line."""
    try:
        return (step or args.func)(args)
    except (ValueError, KeyError, TypeError, OSError, FloatingPointError) as e:
        # expected problems with the input: one line, no traceback (SCDL_DEBUG=1 shows it)
        if os.environ.get("SCDL_DEBUG"):
            raise
        msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        if re.search(r"adata\.raw (is set|holds)", msg) and hasattr(args, "layer"):  # Python fix
            msg += " On the command line, `--layer raw` reads .raw."
        print(f"scdl {args.command}: error: {_as_flags(msg)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scdl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
