"""Where pretrained annotators come from: the package, a local path, or a checked download."""

from __future__ import annotations

import difflib
import json
import lzma
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path

import pandas as pd

from scdl._paths import new_entry, user_path
from scdl._rng import keeps_rng
from scdl.datasets import as_sha256, cache_dir, download, sha256sum

_HERE = Path(__file__).parent / "annotators"
# files an annotator folder may hold; anything else in an archive is ignored
_ALLOWED = ("config.json", "model.safetensors", "README.md")

# name -> where it lives and the sha256 of its weights (bundled) or archive (download).
# Entries with a "url" are fetched with pooch; scdl ships no URL it has not published.
REGISTRY: dict[str, dict] = {
    "pbmc_kang2018": {
        "folder": "pbmc_kang2018",
        "weights_sha256": "62a728a7690aeced78c5e3e29cfc5e1ac8d53129c0612d6f04331969ef39e50f",
        "description": "Human PBMCs, 7 types (Kang et al. 2018, control + IFN-beta)",
    },
}


def available() -> pd.DataFrame:
    """Known pretrained annotators: name, description, source, cell types, genes and the
    path of the model card (``card``: training data, accuracy and Unknown rate on held-out
    data, limits; empty for an annotator not bundled)."""
    rows = []
    for name, entry in REGISTRY.items():
        row = {"name": name, "description": entry["description"]}
        if "folder" in entry:
            config = json.loads((_HERE / entry["folder"] / "config.json").read_text())
            labels = config.get("labels", [])
            row.update(
                source="bundled",
                n_cell_types=len(labels),
                cell_types=", ".join(labels),
                n_genes=len(config["var_names"]),
                card=str(_HERE / entry["folder"] / "README.md"),
            )
        else:
            row.update(source=entry["url"], card="")
        rows.append(row)
    return pd.DataFrame(rows).set_index("name")


def _member_name(entry: str) -> str:
    """An archive member's file name: Windows' zip tools (PowerShell 5.1's Compress-Archive)
    separate folders with backslashes, which a POSIX path keeps inside the name."""
    return entry.replace("\\", "/").rsplit("/", 1)[-1]


def _safe_extract(archive: Path, dest: Path) -> Path:
    """Extract only the annotator's known files (no paths, links or code) into ``dest``,
    through a temporary folder beside it: an archive refused halfway leaves nothing behind.

    An extraction already there with the archive's files is used as it is, without writing:
    other processes may be reading it, and a shared cache may be read-only.
    """
    members = _known_members(archive)
    if _holds(dest, members):
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # made with the mode any new folder gets (mkdtemp's 0700 kept the rest of a shared
        # cache's group out)
        partial = new_entry(dest.parent, f".{dest.name}.", folder=True)
    except OSError as e:
        raise OSError(
            f"Cannot unpack {archive.name} into the cache folder {dest.parent} "
            f"({type(e).__name__}: {e}). Set $SCDL_CACHE to a writable folder, or unpack the "
            "archive yourself and pass its folder."
        ) from e
    try:
        for name, data in members.items():
            (partial / name).write_bytes(data)
        if _holds(dest, members):  # another process unpacked it meanwhile: never delete it
            return dest
        if dest.is_dir():  # differs from the archive (edited or damaged): replaced
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.replace(partial, dest)
        except OSError:
            # another process unpacked the same archive between the check and the move
            if not _holds(dest, members):
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest


def _holds(folder: Path, members: dict[str, bytes]) -> bool:
    """Whether ``folder`` holds exactly these files' bytes (other files are never read)."""
    try:
        return all((folder / name).read_bytes() == data for name, data in members.items())
    except OSError:
        return False


#: the most each file may unpack to: an annotator's weights take a few MB to a few hundred, its
#: config and card far less; a larger member (a decompression bomb) is refused before it is read
MAX_MEMBER_BYTES = {"config.json": 64 << 20, "model.safetensors": 2 << 30, "README.md": 16 << 20}
#: what a damaged or truncated archive raises while it is read
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def _known_members(archive: Path) -> dict[str, bytes]:
    """The archive's members named as the annotator's files, by file name (flat)."""
    try:
        found = _read_members(archive)
    except _DAMAGED as e:
        raise ValueError(
            f"{archive} is damaged or incomplete ({type(e).__name__}: {e}): download it again."
        ) from e
    except (NotImplementedError, RuntimeError) as e:  # zipfile: Deflate64, encryption
        raise ValueError(
            f"{archive} cannot be read ({type(e).__name__}: {e}): pack the annotator's files "
            "as a plain .zip or .tar.gz."
        ) from e
    missing = {"config.json", "model.safetensors"} - set(found)
    if missing:
        raise ValueError(f"{archive} lacks {sorted(missing)}: not a pretrained scdl annotator.")
    return found


def _read_members(archive: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}

    def keep(name: str, size: int, read) -> None:
        if name in found:
            raise ValueError(
                f"{archive} holds several files named {name} (several models?): unpack the "
                "one you want and pass its folder."
            )
        cap = MAX_MEMBER_BYTES[name]
        data = read(cap + 1) if size <= cap else b""  # bounded: the declared size may lie
        if size > cap or len(data) > cap:
            raise ValueError(
                f"{archive}'s {name} unpacks to more than {cap >> 20} MiB ({size} bytes "
                "declared), far more than an scdl annotator's files: the archive is not one."
            )
        found[name] = data

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                name = _member_name(info.filename)
                if info.is_dir() or name not in _ALLOWED:
                    continue
                with z.open(info) as f:
                    keep(name, info.file_size, f.read)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for member in t.getmembers():
                name = _member_name(member.name)
                if name not in _ALLOWED or member.isdir():
                    continue
                if not member.isfile():  # never followed
                    raise ValueError(
                        f"{archive}'s {member.name} is a link or special file, not a file: "
                        "pack the annotator's files themselves."
                    )
                keep(name, member.size, t.extractfile(member).read)
    elif archive.name.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        raise ValueError(
            f"{archive} cannot be read as a {archive.suffix} archive: it is damaged or "
            "incomplete. Download it again."
        )
    else:
        raise ValueError(f"{archive} is neither a folder, a .zip nor a .tar.gz archive.")
    return found


def _fetch_archive(url: str, sha256: str | None) -> Path:

    if not sha256:
        raise ValueError(
            "Downloading a model needs its sha256 checksum (published with the model), so a "
            "tampered or truncated file is refused: pass `sha256=` to scdl.pretrained.load "
            "(`--sha256` on the command line)."
        )
    return download(
        url,
        sha256=sha256,
        folder=cache_dir() / "models",
        offline="download the archive elsewhere and pass its local path (or the folder it "
        "unpacks to) instead of the URL",
    )


def resolve(
    name_or_path: str | os.PathLike, *, sha256: str | None = None, prefix: str | None = None
) -> Path:
    """Local folder holding the annotator's files, downloading/extracting if needed
    (``prefix``: of a folder's save, for its checksum)."""
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(
            f"name_or_path must be a name from scdl.pretrained.available() ({sorted(REGISTRY)}), "
            f"a folder, an archive or a URL, got {type(name_or_path).__name__}."
        )
    key = str(name_or_path)
    if not key.strip():  # Path("") is the working folder
        raise ValueError(
            f"No annotator named: give a name from scdl.pretrained.available() "
            f"({sorted(REGISTRY)}), a folder, an archive or a URL."
        )
    if sha256 is not None:
        sha256 = as_sha256(sha256)
    if key in REGISTRY:
        entry = REGISTRY[key]
        if "folder" in entry:
            folder = _HERE / entry["folder"]
            digest = sha256sum(folder / "model.safetensors")
            if digest != entry["weights_sha256"]:
                raise ValueError(
                    f"Checksum mismatch for the bundled annotator {key!r} ({digest}); the "
                    "installation is corrupt: reinstall scdl."
                )
            if sha256 is not None and sha256 != digest:
                raise ValueError(
                    f"Checksum mismatch for the bundled annotator {key!r}: its model.safetensors "
                    f"has sha256 {digest}, not {sha256}."
                )
            return folder
        archive = _fetch_archive(entry["url"], entry["sha256"])
    elif key.startswith(("http://", "https://")):
        archive = _fetch_archive(key, sha256)
    else:
        path = user_path(name_or_path)
        if path.is_dir():
            weights = path / f"{prefix or ''}model.safetensors"
            if sha256 is not None and sha256sum(weights) != sha256:
                raise ValueError(f"Checksum mismatch for {weights}: expected sha256 {sha256}.")
            return path
        if not path.is_file():
            near = difflib.get_close_matches(key, sorted(REGISTRY), n=1, cutoff=0.6)
            raise ValueError(
                f"{key!r} is not a known annotator ({sorted(REGISTRY)}), a folder, an archive "
                f"or a URL.{f' Did you mean {near[0]!r}?' if near else ''} See "
                "scdl.pretrained.available()."
            )
        archive = path
        if sha256 is not None and sha256sum(path) != sha256:
            raise ValueError(f"Checksum mismatch for {path}: expected sha256 {sha256}.")
    digest = sha256sum(archive)
    return _safe_extract(archive, cache_dir() / "models" / digest[:16])


_SAVE_AGAIN = "Save the model again with `.save()`."


def _refetch_fix(name_or_path) -> str:
    """How a user gets intact files of a pretrained annotator back."""
    key = str(name_or_path)
    if key in REGISTRY and "folder" in REGISTRY[key]:
        return "The installation is corrupt: reinstall scdl."
    if key in REGISTRY or key.startswith(("http://", "https://")):
        return "Download the archive again (delete it from the cache folder first)."
    return "Get the annotator's files again from where they came from."


@keeps_rng  # building the network draws weights the saved ones replace: not the user's draws
def load(
    name_or_path: str | os.PathLike,
    *,
    sha256: str | None = None,
    device: str = "cpu",
    prefix: str | None = None,
):
    """Load a pretrained annotator without executing anything from its files.

    Parameters
    ----------
    name_or_path
        A name from :func:`available` (bundled with scdl), a folder, a ``.zip``/``.tar.gz``
        archive of one, or an ``https://`` URL of such an archive. An archive, local or
        downloaded, is unpacked once into the cache (``$SCDL_CACHE``, else
        the per-user cache folder, e.g. ``~/.cache/scdl``; a few MB each) and read from there
        on later loads.
    sha256
        Checksum of the archive; required for URLs (pooch verifies the download), checked
        for local archives when given; for a folder or a bundled name, the checksum of its
        ``model.safetensors``. Bundled annotators are always checked.
    device
        Where to put the model: ``"cpu"``, ``"auto"`` (a GPU when there is one), ``"cuda"``
        or ``"cuda:N"`` (GPU ``N``).
    prefix
        The ``prefix`` a model in a folder was saved with (:meth:`CellTypeTransformer.save
        <scdl.models.CellTypeTransformer.save>`); only for a folder.

    Returns
    -------
    :class:`scdl.models.CellTypeTransformer`, ready for :func:`scdl.tl.annotate`; its
    ``source_`` attribute holds ``name_or_path`` as given, which :func:`scdl.tl.annotate`
    records as the model's name.
    """
    from scdl.models import CellTypeTransformer

    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "auto", "cuda") or (index and not (kind == "cuda" and index.isdigit())):
        raise ValueError(f"device must be 'cpu', 'auto', 'cuda' or 'cuda:N', got {device!r}.")
    if kind == "cuda":
        import torch

        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= n_gpus:
            raise ValueError(
                f"device={device!r} but this machine has {n_gpus or 'no'} CUDA GPU"
                f"{'' if n_gpus == 1 else 's'}: use device='cpu' or 'auto' (a GPU when there "
                "is one)."
            )
    if prefix is not None and not user_path(name_or_path).is_dir():
        raise ValueError(
            f"prefix={prefix!r} names a save in a folder, but {str(name_or_path)!r} is not a "
            "folder: drop `prefix` for a name, an archive or a URL."
        )
    folder = resolve(name_or_path, sha256=sha256, prefix=prefix)
    accelerator = {"cpu": "cpu", "auto": "auto", "cuda": "gpu"}[kind]
    try:
        # adata=False: annotating never reads the training cells, so a save made with
        # `save_anndata=True` loads without its adata.h5ad (and without reading it)
        model = CellTypeTransformer.load(
            folder,
            adata=False,
            accelerator=accelerator,
            device=int(index) if index else "auto",
            prefix=prefix,
        )
    except FileNotFoundError as e:
        if "saves with prefix" not in str(e):
            raise
        raise FileNotFoundError(
            f"{str(e).rstrip('.')}, or with `scdl.pretrained.load(path, prefix=...)` "
            "(`--prefix` of `scdl annotate`)."
        ) from e
    except ValueError as e:
        # the saved files' own checksums failed: their fix ("save again") is not a user's
        # who never saved this model
        if "model; load it with scdl.models." in str(e):  # another model class's save
            raise ValueError(
                f"{str(e).split(' model; ')[0]} model, not an annotator: annotating needs a "
                "CellTypeTransformer (trained with `labels_key`). Pass an annotator's folder "
                "or a name from `scdl.pretrained.available()`."
            ) from e
        if _SAVE_AGAIN not in str(e):
            raise
        raise ValueError(str(e).replace(_SAVE_AGAIN, _refetch_fix(name_or_path))) from e
    model.source_ = str(name_or_path)
    # recorded by tl.annotate: which weights made the calls, whatever the name
    model.source_sha256_ = sha256sum(folder / f"{prefix or ''}model.safetensors")
    return model
