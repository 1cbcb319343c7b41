"""The shipped annotator: registry, offline and checked loading, tl.annotate, pl, CLI."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import warnings
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from conftest import assert_unchanged, snapshot
from scipy import sparse

import scdl
from scdl.models import CellTypeTransformer
from scdl.pretrained import _registry


@pytest.fixture(scope="module")
def heldout():
    return scdl.datasets.kang_pbmc_heldout()


def test_annotate_names_genes_renamed_by_r(heldout):
    """Fewer than 10% of the model's genes lacking is otherwise only logged: lacking because R
    renamed them ('HLA-DRA' as 'HLA.DRA'), it is said with the fix."""
    query = heldout.copy()
    query.var_names = query.var_names.str.replace(r"[^A-Za-z0-9._]", ".", regex=True)
    with pytest.warns(UserWarning, match=r"as R's make.names writes them"):
        scdl.tl.annotate(query)


def _card() -> str:
    return (_registry._HERE / "pbmc_kang2018" / "README.md").read_text()


def test_available_lists_bundled_annotator():
    table = scdl.pretrained.available()
    assert "pbmc_kang2018" in table.index
    assert table.loc["pbmc_kang2018", "n_cell_types"] == 7
    assert Path(table.loc["pbmc_kang2018", "card"]).read_text() == _card()


def test_load_names_what_it_takes(tmp_path):
    """A non-path name is refused with what load takes (not ``Path(None)``'s TypeError), and a
    folder of prefixed saves says how to load one and where to pass it."""
    with pytest.raises(TypeError, match="name from scdl.pretrained.available.*got NoneType"):
        scdl.pretrained.load(None)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(_registry._HERE / "pbmc_kang2018" / name, tmp_path / f"x_{name}")
    with pytest.raises(
        FileNotFoundError,
        match=r"CellTypeTransformer\.load\(path, prefix='x_'\)`, or with `scdl\.pretrained\.load",
    ):
        scdl.pretrained.load(tmp_path)
    model = CellTypeTransformer.load(tmp_path, prefix="x_")
    assert list(model.labels) == list(scdl.pretrained.load("pbmc_kang2018").labels)


def test_model_card_describes_the_shipped_files():
    """The card's cell types, gene count, thresholds and checksum are those of its files."""
    import hashlib
    import json

    folder = _registry._HERE / "pbmc_kang2018"
    config = json.loads((folder / "config.json").read_text())
    card = " ".join(_card().split())
    labels = config["labels"]
    assert f"**Cell types ({len(labels)}):** {', '.join(labels)}." in card
    assert f"**Genes:** {len(config['var_names'])} highly variable genes" in card
    threshold = float(re.search(r"novelty over (\d+\.\d+)", card).group(1))
    assert threshold == round(config["cluster_threshold"], 3)
    evidence = float(re.search(r"sum above (\d+\.\d+)", card).group(1))
    assert evidence == config["unknown_evidence"]
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert f"sha256 `{sha}`" in card


def test_annotate_writes_fields_and_is_accurate(heldout, tmp_path):
    adata = heldout.copy()
    out = scdl.tl.annotate(adata)
    assert out is None
    key = "scdl_cell_type"
    for col in (key, f"{key}_confidence", f"{key}_unknown"):
        assert col in adata.obs
    probs = adata.obsm[f"{key}_probabilities"]
    assert probs.shape == (adata.n_obs, 7)
    assert adata.uns[key]["n_genes_matched"] == 2000
    params = adata.uns[key]["params"]  # the options that change the calls, as scanpy records
    assert params["unknown"] is True and params["layer"] == "" and params["min_support"] == 0
    # which weights made the calls, should a later scdl ship a retrained model of that name
    assert adata.uns[key]["model_sha256"] == _registry.REGISTRY["pbmc_kang2018"]["weights_sha256"]
    assert adata.uns[key]["scdl_version"] == scdl.__version__
    adata.write_h5ad(tmp_path / "a.h5ad")  # every field is writable
    # no category without cells (no cell is Unknown here): scanpy's tools group by the column
    labels = adata.obs[key]
    assert set(labels.cat.categories) == set(labels.astype(str)), labels.cat.categories
    assert list(labels.cat.categories) == [
        t for t in adata.uns[key]["cell_types"] if t in set(labels)
    ]
    import scanpy as sc

    sc.pp.normalize_total(ranked := adata.copy())
    sc.pp.log1p(ranked)
    sc.tl.rank_genes_groups(ranked, groupby=key)
    acc = np.mean(adata.obs[key].astype(str) == adata.obs["cell_type"].astype(str))
    # the card's held-out accuracy was measured on these never-seen cells (Unknown = wrong)
    card = " ".join(_card().split())
    n_cells, card_acc = re.search(
        r"on the (\d+) held-out cells.*?accuracy (\d+\.\d+)", card
    ).groups()
    assert adata.n_obs == int(n_cells)
    # another torch build may move a borderline cell: at most one cell (plus the rounding)
    assert abs(acc - float(card_acc)) <= 1 / adata.n_obs + 5e-4, (acc, card_acc)


def test_cells_without_counts_are_unknown_and_the_rest_unchanged(heldout):
    """A cell with no count in the model's genes has nothing to be typed by."""
    model = scdl.pretrained.load("pbmc_kang2018")
    before, _ = model.annotate_cells(heldout)
    adata = heldout.copy()
    x = adata.X.tolil()
    empty = [0, 5, 17]
    for i in empty:
        x[i, :] = 0
    adata.X = x.tocsr()
    with pytest.warns(UserWarning, match="3 of 395 query cells have no count in the model's"):
        after, probs = model.annotate_cells(adata)
    assert (after["label"].iloc[empty] == "Unknown").all()
    # an empty profile's softmax (0.78 for CD4T) was written as a confident call
    assert after["confidence"].iloc[empty].isna().all() and probs.iloc[empty].isna().all(None)
    rest = np.setdiff1d(np.arange(adata.n_obs), empty)
    assert np.isfinite(after["confidence"].iloc[rest]).all()
    with pytest.warns(UserWarning, match="NaN confidence and probabilities. Their calls are"):
        forced, _ = model.annotate_cells(adata, unknown_call=False)
    assert (forced["label"].iloc[empty] != "Unknown").all()  # forced calls stay forced
    scdl.tl.annotate(adata, model=model)  # the figure counts them, draws the others
    fig = scdl.pl.annotation(adata, show=False)
    n_unknown = int((adata.obs["scdl_cell_type"] == "Unknown").sum())
    assert f"Unknown ({n_unknown})" in [t.get_text() for t in fig.axes[0].get_yticklabels()]
    # three empty cells may move a query cluster's mean, not the per-cell forced calls
    assert (after["label_forced"].iloc[rest] == before["label_forced"].iloc[rest]).all()
    agree = np.mean(after["label"].iloc[rest].to_numpy() == before["label"].iloc[rest].to_numpy())
    assert agree >= 0.98, agree


def test_a_query_of_empty_droplets_is_all_unknown(heldout):
    """No cell with counts (e.g. empty droplets): every cell Unknown, not an ARPACK error from
    the query's PCA; the composition warning is about typed cells only, so it stays quiet."""
    import warnings

    adata = heldout[:150].copy()
    adata.X = sparse.csr_matrix(adata.shape, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*would have to change type")
        scdl.tl.annotate(adata)
    assert (adata.obs["scdl_cell_type"] == "Unknown").all()
    assert adata.obs["scdl_cell_type_unknown"].all()


def test_empty_droplets_beside_cells_leave_the_cells_calls_unchanged(heldout):
    """As many empty droplets as cells (an unfiltered matrix): the droplets are Unknown and
    the cells keep the calls they get alone (the droplets called 58% of them Unknown)."""
    model = scdl.pretrained.load("pbmc_kang2018")
    cells = heldout[:200].copy()
    alone, _ = model.annotate_cells(cells)
    droplets = cells.copy()
    droplets.X = sparse.csr_matrix(droplets.shape, dtype=np.float32)
    droplets.obs_names = [f"droplet{i}" for i in range(droplets.n_obs)]
    both, _ = model.annotate_cells(ad.concat([cells, droplets]))
    assert (both["label"].iloc[200:] == "Unknown").all()
    assert (both["label"].iloc[:200].to_numpy() == alone["label"].to_numpy()).all()
    assert (alone["label"] != "Unknown").mean() > 0.9  # the case under test: typed cells


def test_near_empty_cells_beside_cells_leave_the_cells_calls_unchanged(heldout):
    """Cells of 1-3 counts (segmentation slivers, near-empty droplets) got confident calls
    and, in the query's statistics and clusters, turned real cells Unknown (on a 200-gene
    panel, 300 of them beside 2,000 cells called most CD4 T cells Unknown). They are Unknown,
    said in a warning, and the other cells keep the calls they get alone."""
    model = scdl.pretrained.load("pbmc_kang2018")
    cells = heldout[:300].copy()
    alone, _ = model.annotate_cells(cells)
    slivers = cells[:150].copy()
    rng = np.random.default_rng(0)
    x = slivers[:, model.get_var_names()].X.toarray().astype(np.int64)
    kept = np.zeros_like(x)
    for i, row in enumerate(x):  # 1-3 of each cell's own counts
        drawn = rng.choice(np.repeat(np.arange(row.size), row), rng.integers(1, 4), replace=False)
        np.add.at(kept[i], drawn, 1)
    slivers = slivers[:, model.get_var_names()].copy()
    slivers.X = sparse.csr_matrix(kept.astype(np.float32))
    slivers.obs_names = [f"sliver{i}" for i in range(slivers.n_obs)]
    query = ad.concat([cells[:, model.get_var_names()], slivers])
    with pytest.warns(UserWarning, match=r"150 of 450 query cells hold fewer than .* counts") as w:
        both, _ = model.annotate_cells(query)
    assert (both["label"].iloc[300:] == "Unknown").all()
    assert (both["label"].iloc[:300].to_numpy() == alone["label"].to_numpy()).all()
    assert (alone["label"] != "Unknown").mean() > 0.9
    _the_filter_drops_them(w, query, model)
    # the same query log-normalised (a file without counts): the counts behind it are read
    import scanpy as sc

    counts = query.X.copy()
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    with pytest.warns(UserWarning, match=r"150 of 450 query cells hold fewer than") as w:
        lognorm, _ = model.annotate_cells(query)
    assert (lognorm["label"].iloc[300:] == "Unknown").all()
    _the_filter_drops_them(w, query, model)  # counted in genes detected (it summed log values)
    # counts in a layer beside log-normalised X: the filter reads the layer (it read X)
    query.layers["counts"] = counts
    with pytest.warns(UserWarning, match=r"150 of 450 query cells hold fewer than") as w:
        model.annotate_cells(query, layer="counts")
    _the_filter_drops_them(w, query, model, layer="counts")
    # two of the slivers empty: one warning says both kinds, with the filter that drops both
    counts = counts.tolil()
    counts[[300, 301], :] = 0
    query.layers["counts"] = counts.tocsr()
    pattern = r"2 of 450 query cells have no count.*; 148 more query cells hold fewer than"
    with pytest.warns(UserWarning, match=pattern) as w:
        model.annotate_cells(query, layer="counts")
    _the_filter_drops_them(w, query, model, layer="counts")


def _the_filter_drops_them(record, adata, model, layer=None):
    """The warning's filter, run as written, drops the near-empty cells and keeps the rest."""
    message = next(str(r.message) for r in record if "hold fewer than" in str(r.message))
    code = re.search(r"e\.g\. `(genes = .*?)`", message)[1]
    assert ("layers['counts']" in code) == (layer == "counts"), code
    space = {"adata": adata, "model": model, "np": np}
    exec(code, space)
    kept = space["adata"]
    assert kept.n_obs == 300 and not kept.obs_names.str.startswith("sliver").any()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*hold fewer than")
        model.annotate_cells(kept, layer=layer)


def test_a_query_far_shallower_than_the_reference_is_warned_about(heldout):
    """Below 1/16 of the reference's depth (imaging panels of a few dozen counts) the calls
    lose accuracy fast (on Kang's cells thinned to a twentieth, below a logistic regression's):
    said; at the reference's own depth, not."""
    import warnings

    model = scdl.pretrained.load("pbmc_kang2018")
    cells = heldout[:300].copy()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*shallowest depth")
        model.annotate_cells(cells)
    x = sparse.csr_matrix(cells.X, dtype=np.float32, copy=True)  # binomial thinning
    x.data = np.random.default_rng(0).binomial(x.data.astype(np.int64), 1 / 32).astype(np.float32)
    x.eliminate_zeros()
    cells.X = x
    with pytest.warns(UserWarning, match=r"hold \d+\.\d% of the counts .* below 1/16"):
        model.annotate_cells(cells)
    # a panel of half the model's genes: compared over the genes it holds (the sketch's
    # depths count genes it lacks, and the warning was skipped); thinned further, as few
    # counts per cell leave the calls on the shallowest type, whose depth the cells are read
    # against
    panel = heldout[:300, heldout.var_names.isin(np.asarray(model.get_var_names())[::2])].copy()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*shallowest depth")
        model.annotate_cells(panel, min_gene_overlap=0.1)
    x = sparse.csr_matrix(panel.X, dtype=np.float32, copy=True)
    x.data = np.random.default_rng(0).binomial(x.data.astype(np.int64), 1 / 64).astype(np.float32)
    x.eliminate_zeros()
    panel.X = x
    with pytest.warns(UserWarning, match=r"hold \d+\.\d% of the counts .* below 1/16"):
        model.annotate_cells(panel, min_gene_overlap=0.1)


def test_annotate_copy_leaves_input_unchanged(heldout):
    adata = heldout.copy()
    snap = snapshot(adata)
    out = scdl.tl.annotate(adata, copy=True, key_added="ct", unknown=False)
    assert_unchanged(adata, snap)
    assert "ct" in out.obs and "Unknown" not in out.obs["ct"].cat.categories


def test_annotate_bad_input_leaves_adata_unchanged(heldout):
    adata = heldout[:, :500].copy()  # 25% of the model's genes
    snap = snapshot(adata)
    with pytest.raises(ValueError, match=r"at least 1000 \(50%\)"):
        scdl.tl.annotate(adata)
    assert_unchanged(adata, snap)
    lognorm = heldout.copy()
    lognorm.X = np.log1p(lognorm.X.toarray())
    snap = snapshot(lognorm)
    with pytest.raises(ValueError, match="nor is it log1p of counts normalised per cell"):
        scdl.tl.annotate(lognorm)
    assert_unchanged(lognorm, snap)
    # a counts layer under another name is named, and its fix runs
    lognorm.layers["raw_counts"] = heldout.X.copy()
    with pytest.raises(ValueError, match=r"Raw counts are in this AnnData: pass `layer='raw_c"):
        scdl.tl.annotate(lognorm)
    scdl.tl.annotate(lognorm, layer="raw_counts")
    # linear fractional values (estimated counts) are named as such; rounding them runs
    linear = heldout.copy()
    linear.X = linear.X * 1.37
    linear.X.data += 0.11
    with pytest.raises(ValueError, match=r"far above a log scale: linear values.*round them"):
        scdl.tl.annotate(linear)
    linear.X.data = np.round(linear.X.data)
    scdl.tl.annotate(linear)
    with pytest.raises(ValueError, match="not a known annotator"):
        scdl.tl.annotate(heldout.copy(), model="no_such_model")
    with pytest.raises(TypeError, match="CellTypeTransformer"):
        scdl.tl.annotate(heldout.copy(), model=42)


def _archive(kind: str, tmp_path, extra: dict | None = None):
    folder = _registry._HERE / "pbmc_kang2018"
    path = tmp_path / f"annot.{kind}"
    files = {n: (folder / n).read_bytes() for n in ("config.json", "model.safetensors")}
    files.update(extra or {})
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            for name, data in files.items():
                z.writestr(f"pbmc/{name}" if not name.startswith("..") else name, data)
    else:
        with tarfile.open(path, "w:gz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name if name.startswith("..") else f"pbmc/{name}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_loads_and_ignores_unsafe_members(kind, tmp_path, monkeypatch, heldout):
    monkeypatch.setenv("SCDL_CACHE", str(tmp_path / "cache"))
    path = _archive(kind, tmp_path, extra={"../evil.py": b"raise SystemExit"})
    model = scdl.pretrained.load(path)
    ref = scdl.pretrained.load("pbmc_kang2018")
    np.testing.assert_array_equal(
        model.predict(heldout, soft=True).to_numpy(), ref.predict(heldout, soft=True).to_numpy()
    )
    assert not (tmp_path / "evil.py").exists()
    assert not (tmp_path / "cache" / "evil.py").exists()
    with pytest.raises(ValueError, match="Checksum mismatch"):
        scdl.pretrained.load(path, sha256="0" * 64)
    # a checksum as PowerShell or certutil print it (uppercase), or pasted with a space
    digest = scdl.datasets.sha256sum(path)
    scdl.pretrained.load(path, sha256=f" {digest.upper()}\n")
    with pytest.raises(ValueError, match="64 hexadecimal characters"):
        scdl.pretrained.load(path, sha256=digest[:12])


def test_damaged_or_crafted_archives_are_refused_by_name(tmp_path, monkeypatch):
    """A truncated or corrupt archive, a member larger than an annotator's files can be (a
    decompression bomb: read no further than the limit), two models in one archive and a link
    are each refused with a ValueError naming the archive, nothing left in the cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SCDL_CACHE", str(cache))
    good = {kind: _archive(kind, tmp_path).read_bytes() for kind in ("zip", "tar.gz")}
    for kind, data in good.items():
        cut = tmp_path / f"cut.{kind}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match="damaged or incomplete"):
            scdl.pretrained.load(cut)
    crc = bytearray(good["zip"])  # flip a byte inside the stored weights' data
    crc[len(crc) // 2] ^= 0xFF
    (tmp_path / "crc.zip").write_bytes(bytes(crc))
    with pytest.raises(ValueError, match="damaged or incomplete"):
        scdl.pretrained.load(tmp_path / "crc.zip")
    monkeypatch.setitem(_registry.MAX_MEMBER_BYTES, "config.json", 1_000)
    with pytest.raises(ValueError, match=r"config.json unpacks to more than"):
        scdl.pretrained.load(_archive("tar.gz", tmp_path))
    monkeypatch.undo()
    monkeypatch.setenv("SCDL_CACHE", str(cache))
    twice = tmp_path / "twice.zip"
    with zipfile.ZipFile(twice, "w") as z, zipfile.ZipFile(io.BytesIO(good["zip"])) as one:
        for name in one.namelist():
            z.writestr(name, one.read(name))
            z.writestr(f"other/{name}", one.read(name))
    with pytest.raises(ValueError, match="several files named"):
        scdl.pretrained.load(twice)
    linked = tmp_path / "linked.tar.gz"
    with tarfile.open(linked, "w:gz") as t, tarfile.open(tmp_path / "annot.tar.gz") as one:
        for member in one.getmembers():
            if member.name.endswith("config.json"):
                t.addfile(member, one.extractfile(member))
        link = tarfile.TarInfo("pbmc/model.safetensors")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    with pytest.raises(ValueError, match="is a link or special file"):
        scdl.pretrained.load(linked)
    assert not (cache / "models").exists() or not list((cache / "models").glob("*"))


def test_a_refused_archive_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    """Extraction goes through a temporary folder: an archive without the model's files, or a
    file that is no archive, leaves the cache as it was; a good one is then extracted."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SCDL_CACHE", str(cache))
    folder = _registry._HERE / "pbmc_kang2018"
    partial = tmp_path / "partial.zip"
    with zipfile.ZipFile(partial, "w") as z:
        z.writestr("pbmc/config.json", (folder / "config.json").read_bytes())
    not_archive = tmp_path / "counts.h5ad"
    not_archive.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=r"lacks \['model.safetensors'\]"):
        scdl.pretrained.load(partial)
    with pytest.raises(ValueError, match="neither a folder, a .zip nor a .tar.gz"):
        scdl.pretrained.load(not_archive)
    assert not list((cache / "models").glob("*"))  # no model folder left, empty or not
    scdl.pretrained.load(_archive("zip", tmp_path))
    extracted = [p for p in (cache / "models").iterdir()]
    assert len(extracted) == 1 and {p.name for p in extracted[0].iterdir()} == {
        "config.json",
        "model.safetensors",
    }


def test_an_unpacked_archive_is_reused_and_a_damaged_copy_replaced(tmp_path, monkeypatch):
    """A second load reads the earlier extraction in place (other processes may be reading it,
    a shared cache may be read-only); a copy that no longer matches the archive is unpacked
    again."""
    monkeypatch.setenv("SCDL_CACHE", str(tmp_path / "cache"))
    path = _archive("zip", tmp_path)
    first = _registry.resolve(path)
    inode = first.stat().st_ino
    assert _registry.resolve(path) == first and first.stat().st_ino == inode
    (first / "config.json").write_text("{}")
    assert _registry.resolve(path) == first
    assert (first / "config.json").read_bytes() == (
        _registry._HERE / "pbmc_kang2018" / "config.json"
    ).read_bytes()


def test_a_cache_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("SCDL_CACHE", str(blocker))
    with pytest.raises(OSError, match=r"Cannot unpack.*Set \$SCDL_CACHE to a writable folder"):
        scdl.pretrained.load(_archive("zip", tmp_path))
    # a download is refused before any network: the folder is the problem, not the network
    with pytest.raises(OSError, match=r"Could not store.*Set \$SCDL_CACHE to a writable folder"):
        scdl.datasets.fetch_file("x.bin", sha256="0" * 64, url="https://example.org/x.bin")


def test_a_damaged_bundled_annotator_asks_for_a_reinstall(tmp_path, monkeypatch):
    """The saved files' own checks say "save again"; a pretrained model's user never saved it."""
    folder = tmp_path / "annotators" / "pbmc_kang2018"
    shutil.copytree(_registry._HERE / "pbmc_kang2018", folder)
    config = folder / "config.json"
    edited = json.loads(config.read_text())
    edited["labels"][0] = "Bcell"
    config.write_text(json.dumps(edited))
    monkeypatch.setattr(_registry, "_HERE", tmp_path / "annotators")
    with pytest.raises(ValueError, match="config.json does not match.*reinstall scdl") as info:
        scdl.pretrained.load("pbmc_kang2018")
    assert ".save()" not in str(info.value)


def test_a_pretrained_annotator_trained_further_records_no_shipped_checksum(heldout, tmp_path):
    """uns[key]["model_sha256"] names the weights that made the calls: once the shipped model is
    trained further (saved and loaded with labelled cells first), they are not the shipped ones."""
    scdl.pretrained.load("pbmc_kang2018").save(tmp_path / "m")
    cells = heldout.copy()
    model = CellTypeTransformer.load(tmp_path / "m", adata=cells)
    assert model.source_sha256_ == _registry.REGISTRY["pbmc_kang2018"]["weights_sha256"]
    model.train(max_epochs=1, enable_progress_bar=False)
    scdl.tl.annotate(cells, model=model)
    assert cells.uns["scdl_cell_type"]["model_sha256"] == ""


def test_url_requires_checksum():
    with pytest.raises(ValueError, match="sha256"):
        scdl.pretrained.load("https://example.org/annotator.zip")
    with pytest.raises(ValueError, match="No annotator named.*pbmc_kang2018"):
        scdl.pretrained.load("")  # it was read as the working folder


def test_a_gpu_that_is_not_there_is_named():
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match="CUDA GPU.*use device='cpu'"):
        scdl.pretrained.load("pbmc_kang2018", device=f"cuda:{n}")


def test_bundled_checksum_is_verified(monkeypatch):
    entry = dict(_registry.REGISTRY["pbmc_kang2018"], weights_sha256="0" * 64)
    monkeypatch.setitem(_registry.REGISTRY, "pbmc_kang2018", entry)
    with pytest.raises(ValueError, match="Checksum mismatch"):
        scdl.pretrained.load("pbmc_kang2018")


def test_folder_with_pickle_weights_is_refused(tmp_path):
    folder = tmp_path / "annot"
    shutil.copytree(_registry._HERE / "pbmc_kang2018", folder)
    (folder / "model.safetensors").write_bytes(b"\x80\x04\x95not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        scdl.pretrained.load(folder)


def test_plots(heldout):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    adata = heldout.copy()
    scdl.tl.annotate(adata)
    fig = scdl.pl.annotation(adata, groupby="cell_type", show=False)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    attr = scdl.pretrained.load("pbmc_kang2018").gene_attributions(adata, label="B", n_cells=20)
    fig = scdl.pl.attributions(attr, show=False)
    assert isinstance(fig, Figure)
    import matplotlib.pyplot as plt

    own, ax = plt.subplots()  # one label: one Axes of the user's figure, nothing added
    assert scdl.pl.attributions(attr, n_top=5, ax=ax, show=False) is own
    assert len(own.axes) == 1 and len(ax.patches) == 5
    plt.close(own)
    with pytest.raises(ValueError, match="gene_attributions"):
        scdl.pl.attributions(adata.obs, show=False)


def test_cli_annotate(tmp_path, heldout, capsys):
    from scdl.cli import main

    src = tmp_path / "in.h5ad"
    heldout.write_h5ad(src)
    assert main(["annotate", str(src), "-o", str(tmp_path / "out.h5ad")]) == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert "scdl_cell_type" in out.obs
    assert main(["annotate", str(src), "-o", str(tmp_path / "x.h5ad"), "--model", "nope"]) == 2
    assert "not a known annotator" in capsys.readouterr().err


def test_annotator_without_format_version_is_refused(tmp_path):
    import json

    folder = tmp_path / "annot"
    shutil.copytree(_registry._HERE / "pbmc_kang2018", folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 1  # the shipped annotator records its format
    del config["format_version"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="records no format_version.*format 1"):
        scdl.pretrained.load(folder)


def test_shipped_annotator_calls_non_pbmc_cells_unknown_and_pbmcs_known(heldout):
    """Its Unknown call (calibrated leave one condition out) keeps the held-out PBMCs, of
    both conditions, and calls cells of lung cancer lines Unknown."""
    from conftest import read_shared

    model = scdl.pretrained.load("pbmc_kang2018")
    assert model.novelty_calibration_ == "leave-one-batch-out"
    calls, _ = model.annotate_cells(heldout)
    assert calls["is_unknown"].mean() <= 0.05
    lung = read_shared("cellbench_lung_5lines_3plates.h5ad")
    lung = lung[:, np.asarray(lung.X.sum(0)).ravel() > 0].copy()
    calls, _ = model.annotate_cells(lung, min_gene_overlap=0.3)
    assert calls["is_unknown"].mean() >= 0.9


def test_the_order_of_the_cells_does_not_change_the_calls():
    """The Unknown call and the vote are made on Leiden clusters of the query, and Leiden
    depends on the order of its nodes: another lab's cells (PBMC 7k's panel) in another
    order had up to 7% of their calls changed (and float32 sums of the query's statistics
    moved a cluster). The query is read in an order of its cells' own content."""
    import scanpy as sc
    from conftest import read_shared

    cells = read_shared("pbmc_7k_200genes.h5ad")[-2000:].copy()
    twins = cells[:10].copy()  # cells identical to others: a graph tells them apart by name
    twins.obs_names = [f"twin{i}" for i in range(twins.n_obs)]
    cells = ad.concat([cells, twins])
    model = scdl.pretrained.load("pbmc_kang2018")
    first = scdl.tl.annotate(
        cells, model=model, min_gene_overlap=0.05, majority_voting=True, copy=True
    )
    assert (first.obs["scdl_cell_type"] == "Unknown").mean() > 0.02  # calls to move
    # a vote over the user's neighbour graph (reordered with the cells, as AnnData does)
    graph = cells.copy()
    sc.pp.normalize_total(graph)
    sc.pp.log1p(graph)
    sc.pp.pca(graph, n_comps=20)
    sc.pp.neighbors(graph, transformer="sklearn")
    cells.obsp["connectivities"] = graph.obsp["connectivities"]
    on_graph = scdl.tl.annotate(
        cells, model=model, min_gene_overlap=0.05, majority_voting=True, copy=True
    )
    for seed in (1, 2):
        order = np.random.default_rng(seed).permutation(cells.n_obs)
        pairs = [(first, cells[order].copy())]
        # reversed: the twins come before their originals (a stable order kept that)
        pairs += [(on_graph, cells[::-1].copy())] if seed == 1 else []
        for done, query in pairs:
            if done is first:
                del query.obsp["connectivities"]
            again = scdl.tl.annotate(
                query, model=model, min_gene_overlap=0.05, majority_voting=True, copy=True
            ).obs.loc[done.obs_names]
            for key in ("scdl_cell_type", "scdl_cell_type_majority_voting"):
                assert (again[key].astype(str) == done.obs[key].astype(str)).all(), (seed, key)
            assert np.allclose(  # probabilities too, cell by cell
                again["scdl_cell_type_confidence"], done.obs["scdl_cell_type_confidence"]
            )
