"""Loading a model never runs code from the file."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings

import numpy as np
import pytest
from conftest import as_saved_before_config_checksum, assert_unchanged, snapshot
from scipy import sparse

import scdl
from scdl.models import VAE

MARKER = "scdl_pwned_marker"


class _Exploit:
    def __reduce__(self):  # what a malicious pickle does on load
        import os

        return (os.system, (f"touch {MARKER}",))


@pytest.fixture()
def saved(kang_integrated, tmp_path):
    _, model = kang_integrated
    model.save(tmp_path / "m")
    return tmp_path / "m"


def test_pickled_weights_are_refused_without_running_code(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import torch

    torch.save({"x": _Exploit()}, saved / "model.safetensors")  # a pickle in disguise
    with pytest.raises(ValueError, match="not a valid safetensors"):
        VAE.load(saved)
    assert not (tmp_path / MARKER).exists()


def test_raw_pickle_weights_refused(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (saved / "model.safetensors").write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ValueError, match="is not a valid safetensors file"):
        VAE.load(saved)
    assert not (tmp_path / MARKER).exists()


def test_format_version_mismatch_is_named(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["format_version"] = 99
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format 99"):
        VAE.load(saved)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        VAE.load(tmp_path)


def test_a_folder_saved_by_scvi_tools_is_named_and_not_unpickled(kang, tmp_path, monkeypatch):
    """scvi-tools' SCVI.save writes a pickled model.pt: refused unread, the message saying
    what the folder is and the two ways on (scvi-tools' load, or training scdl's model)."""
    import scvi

    monkeypatch.chdir(tmp_path)
    adata = kang[:120, :200].copy()
    scvi.model.SCVI.setup_anndata(adata)
    ref = scvi.model.SCVI(adata, n_latent=4)
    ref.train(max_epochs=1, enable_progress_bar=False)
    ref.save(tmp_path / "scvi_save")
    (tmp_path / "scvi_save" / "model.pt").write_bytes(pickle.dumps(_Exploit()))
    for prefix in (None, "x_"):
        if prefix:
            (tmp_path / "scvi_save" / "model.pt").rename(tmp_path / "scvi_save" / "x_model.pt")
        with pytest.raises(
            FileNotFoundError,
            match=r"model.pt, a model saved by scvi-tools.*"
            r"scvi.model.SCVI.load",
        ):
            VAE.load(tmp_path / "scvi_save", adata=adata.copy(), prefix=prefix)
    assert not (tmp_path / MARKER).exists()


def test_missing_weights_name_the_fix(saved, tmp_path):
    import shutil

    copy = shutil.copytree(saved, tmp_path / "copy")
    (copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="not its weights. Copy the whole folder"):
        VAE.load(copy)


def test_load_checks_genes(saved, kang_integrated):
    adata, model = kang_integrated
    wrong = model.adata[:, 5:].copy()
    with pytest.raises(ValueError, match="lacks 5"):
        VAE.load(saved, wrong)


def test_load_resolves_the_device_and_refuses_what_it_cannot_use(saved, kang_integrated):
    """``accelerator``/``device`` as scvi-tools reads them: "auto" is the CPU on a machine
    without a GPU, and several devices or an accelerator scdl does not run on are refused."""
    import torch

    adata = kang_integrated[1].adata
    model = VAE.load(saved, adata=adata.copy())
    assert next(model.module.parameters()).device == torch.device("cpu")
    with pytest.raises(ValueError, match="not one of"):
        VAE.load(saved, adata=adata.copy(), accelerator="tpu")
    for several in ([0, 1], -1, "0,1"):
        with pytest.raises(ValueError, match="one device"):
            VAE.load(saved, adata=adata.copy(), device=several)
    VAE.load(saved, adata=adata.copy(), device=0)  # an index, as scvi-tools documents it
    # as torch writes a device: read as its accelerator and index
    model = VAE.load(saved, adata=adata.copy(), device="cpu")
    assert next(model.module.parameters()).device == torch.device("cpu")
    with pytest.raises(ValueError, match="accelerator='cpu' and device 'cuda:0' disagree"):
        VAE.load(saved, adata=adata.copy(), accelerator="cpu", device="cuda:0")
    for wrong in ("tpu:0", "cuda:x", "cuda:", "cuda:1.5"):  # not silently the CPU
        with pytest.raises(ValueError, match="not one scdl can use"):
            VAE.load(saved, adata=adata.copy(), device=wrong)
    from scdl.models._devices import resolve_device

    assert resolve_device("cpu", "1,")[1] == "1,"  # Lightning's one-index form, left to it
    for none in (0, "0"):  # Lightning's count of no devices: named, not a TypeError
        with pytest.raises(ValueError, match="selects no cuda device"):
            resolve_device("cuda", none)
    model = VAE.load(saved, adata=adata.copy(), device=torch.device("cpu"))
    assert next(model.module.parameters()).device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match=r"(?i)gpu: \[0\]") as gone:
            VAE.load(saved, adata=adata.copy(), device="cuda:0")
        assert "invalid literal" not in str(gone.value)
        # load's device "1" is the index 1, as its int (Lightning would read a count of one)
        with pytest.raises(Exception, match=r"(?i)gpu: \[1\]"):
            VAE.load(saved, adata=adata.copy(), accelerator="cuda", device="1")
    if not torch.cuda.is_available():
        with pytest.raises(Exception, match="(?i)gpu|cuda"):
            VAE.load(saved, adata=adata.copy(), accelerator="cuda")


def test_load_query_from_folder(saved, kang_integrated, tmp_path):
    adata, model = kang_integrated
    query = model.adata[model.adata.obs["sample"] == "stim107"].copy()
    shutil.copytree(saved, tmp_path / "copy")
    qm = VAE.load_query_data(query, tmp_path / "copy")
    assert qm.summary_stats.n_batch == 4
    # a saved reference maps a query as the same reference in memory does, seed for seed
    import scvi

    latents = []
    for reference in (model, tmp_path / "copy"):
        scvi.settings.seed = 0
        qm = VAE.load_query_data(query[:200].copy(), reference)
        qm.train(max_epochs=2, enable_progress_bar=False)
        latents.append(qm.get_latent_representation())
    np.testing.assert_array_equal(*latents)


def test_inherited_scvi_loaders_never_unpickle(saved, kang_integrated, tmp_path, monkeypatch):
    """scvi-tools' prepare_query_anndata/load_registry torch.load a model.pt; scdl's do not."""
    import torch

    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"attr_dict": _Exploit()}, evil / "model.pt")
    query = kang_integrated[1].adata[:50].copy()
    with pytest.raises(FileNotFoundError, match="config.json"):
        VAE.prepare_query_anndata(query, str(evil))
    with pytest.raises(FileNotFoundError, match="config.json"):
        VAE.load_registry(str(evil))
    with pytest.raises(NotImplementedError, match="pickled"):
        VAE.convert_legacy_save(str(evil), str(tmp_path / "out"))
    assert not (tmp_path / MARKER).exists()
    # the safe versions read config.json
    assert VAE.load_registry(saved)["setup_args"]["batch_key"] == "sample"
    genes = VAE.prepare_query_anndata(query, str(saved), return_reference_var_names=True)
    assert list(genes) == list(kang_integrated[1].get_var_names())


def _drop_init_params_saved_before_checksums(folder):
    as_saved_before_config_checksum(folder)
    _edit_config(folder, lambda c: c["attrs"].pop("init_params_"))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.pop("format_version"), "records no format_version.*format 1"),
        (lambda c: c.update(format="something-else"), "not an scdl model config"),
        (
            lambda c: c["attrs"]["init_params_"]["non_kwargs"].update(n_latent=3),
            "config.json does not match the checksum model.safetensors recorded",
        ),
        (lambda c: c.update(scdl_version="0.0.1"), "config.json does not match"),
    ],
)
def test_edited_config_is_refused(saved, edit, match):
    cfg = json.loads((saved / "config.json").read_text())
    edit(cfg)
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        VAE.load(saved)


def test_corrupt_config_json(saved):
    (saved / "config.json").write_text('{"format": "scdl-model", ')
    with pytest.raises(ValueError, match="not valid JSON"):
        VAE.load(saved)


def test_saved_config_records_format_and_version(saved):
    import scdl

    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["scdl_version"] == scdl.__version__


def test_saved_weights_are_as_readable_as_the_config(saved):
    """safetensors writes through a 0600 temporary file; the saved weights get the user's
    usual permissions, as config.json (another user of a shared model can read both)."""
    import os
    import stat

    def mode(name):
        return stat.S_IMODE(os.stat(saved / name).st_mode)

    assert mode("model.safetensors") == mode("config.json")


# --- edited saves: refused before the AnnData given to load() is registered -----------------


@pytest.fixture(scope="module")
def small_save(kang, tmp_path_factory):
    """A VAE trained briefly on 100 cells, saved; and those cells, unregistered."""
    idx = np.sort(np.random.default_rng(0).choice(kang.n_obs, 100, replace=False))
    adata = kang[idx].copy()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    clean = adata.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        VAE.setup_anndata(adata)
        model = VAE(adata)
        model.train(max_epochs=1, enable_progress_bar=False)
    path = tmp_path_factory.mktemp("save") / "m"
    model.save(path)
    return path, clean


def _edit_config(folder, edit):
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def _reverse_genes(folder):
    _edit_config(folder, lambda c: c.update(var_names=c["var_names"][::-1]))


def _shrink_latent(folder):
    _edit_config(folder, lambda c: c["attrs"]["init_params_"]["non_kwargs"].update(n_latent=3))


def _flip_weight_bytes(folder):
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])  # last values changed, header intact
    weights.write_bytes(bytes(data))


def _flip_weights_drop_checksum(folder):
    _flip_weight_bytes(folder)
    _edit_config(folder, lambda c: c.pop("weights_sha256"))


def _shrink_latent_saved_before_checksums(folder):
    as_saved_before_config_checksum(folder)
    _shrink_latent(folder)


def _reverse_genes_saved_before_checksums(folder):
    as_saved_before_config_checksum(folder)
    _reverse_genes(folder)


def _without_checksums(folder, edit):
    as_saved_before_config_checksum(folder)
    _edit_config(folder, lambda c: (c.pop("weights_sha256"), edit(c)))


def _set_a_method_without_checksums(folder):
    """``save`` writes only ``*_`` attributes; a config naming a method or the module would
    replace it on the loaded model."""
    _without_checksums(folder, lambda c: c["attrs"].update(predict=1, module={}))


def _subarray_dtype_without_checksums(folder):
    """A sub-array dtype makes a few bytes of JSON allocate n x 4,000 x 4,000 floats."""
    array = {"__ndarray__": [0, 0], "dtype": "(4000,4000)f8"}
    _without_checksums(folder, lambda c: c["attrs"].update(large_=array))


def _name_torch_load_without_checksums(folder):
    """A config may name a torch activation (an option's value), never another callable."""
    named = {"__torch__": "torch.load"}
    _without_checksums(folder, lambda c: c["attrs"]["init_params_"]["kwargs"].update(f=named))


def _drop_class_saved_before_checksums(folder):
    as_saved_before_config_checksum(folder)
    _edit_config(folder, lambda c: c.pop("model_class"))


def _resigned(folder, edit_config=None, edit_weights=None):
    """Edited and signed again as a crafted file would be (the checksums are for damage, not
    for authorship): the weights' checksum recomputed, the config's dropped."""
    from safetensors.torch import load_file, save_file

    from scdl.datasets import sha256sum

    weights = folder / "model.safetensors"
    state = load_file(weights)
    if edit_weights is not None:
        edit_weights(state)
    save_file(state, weights)
    _edit_config(folder, lambda c: (edit_config and edit_config(c), c.update(weights_sha256=None)))
    _edit_config(folder, lambda c: c.update(weights_sha256=sha256sum(weights)))


def _nan_weight(folder):
    def nan(state):  # the first weight with values (the VAE's covariate scaling may be empty)
        next(t for t in state.values() if t.numel() and t.is_floating_point()).view(-1)[0] = float(
            "nan"
        )

    _resigned(folder, edit_weights=nan)


def _registry_a_list(folder):
    _resigned(folder, lambda c: c["attrs"].update(registry_=[]))


def _torch_name_a_list(folder):
    named = {"__torch__": ["torch.exp"]}
    _resigned(folder, lambda c: c["attrs"]["init_params_"]["kwargs"].update(f=named))


def _nested_deep(folder):
    """Lists 950 deep: JSON that parses, then too deep to decode (or to parse)."""
    _resigned(folder, lambda c: c["attrs"].update(deep_="DEEP"))
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"DEEP"', "[" * 950 + "]" * 950))


def _huge_hidden_layer(folder):
    """10^9 units: the network is checked against the weights before it is allocated."""
    _resigned(folder, lambda c: c["attrs"]["init_params_"]["non_kwargs"].update(n_hidden=10**9))


def _no_init_params(folder):
    _resigned(folder, lambda c: c["attrs"].update(init_params_=None))


def _trained_flag_as_text(folder):
    _resigned(folder, lambda c: c["attrs"].update(is_trained_="no"))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_reverse_genes, "config.json does not match the checksum"),
        (_reverse_genes_saved_before_checksums, "differ from the .* its registry holds.*edited"),
        (_flip_weight_bytes, "does not match the checksum.*edited, swapped"),
        (_flip_weights_drop_checksum, "config.json does not match the checksum"),
        (_shrink_latent, "config.json does not match the checksum"),
        (_shrink_latent_saved_before_checksums, "do not fit the model"),
        (_drop_class_saved_before_checksums, r"config.json lacks \['model_class'\]"),
        (_drop_init_params_saved_before_checksums, r"lacks \['attrs.init_params_'\].*edited"),
        (_set_a_method_without_checksums, r"sets the attributes \['module', 'predict'\]"),
        (_subarray_dtype_without_checksums, r"dtype '\(4000,4000\)f8'.*edited"),
        (_name_torch_load_without_checksums, r"'torch.load', not one of the torch activ"),
        (_nan_weight, r"model.safetensors holds NaN in '.*corrupt"),
        (_registry_a_list, r"lacks \['attrs.registry_ \(setup_args"),
        (_torch_name_a_list, r"does not describe a model scdl can build \(TypeError"),
        (_nested_deep, r"config.json (is not valid JSON|does not describe).*maximum recursion"),
        (_huge_hidden_layer, "do not fit the model"),
        (_no_init_params, r"lacks \['attrs.init_params_.non_kwargs/kwargs'\]"),
        (_trained_flag_as_text, r"holds \['is_trained_'\] in a form no scdl save writes"),
    ],
)
def test_load_refuses_an_edited_save(small_save, tmp_path, edit, match):
    path, adata = small_save
    shutil.copytree(path, tmp_path / "m")
    edit(tmp_path / "m")
    query = adata.copy()
    snap = snapshot(query)
    with pytest.raises(ValueError, match=match) as info:
        VAE.load(tmp_path / "m", adata=query)
    assert str(info.value).count(str(tmp_path / "m")) <= 1  # the folder is named once
    assert_unchanged(query, snap)
    assert "_scvi_uuid" not in query.uns
    VAE.load(path, adata=adata.copy())  # the untouched save loads


def test_activation_options_are_saved_by_name_and_code_is_refused(kang, tmp_path):
    """scvi-tools' activation options (a torch class or function) save as names of torch's
    activations; any other callable is said when the model is built and refused by ``save``
    naming the option, and no folder is left behind."""
    import torch

    plain = kang[:150].copy()
    adata = plain.copy()
    VAE.setup_anndata(adata)
    model = VAE(
        adata,
        extra_encoder_kwargs={"activation_fn": torch.nn.LeakyReLU},
        var_activation=torch.nn.functional.softplus,
    )
    assert isinstance(model.module.z_encoder.encoder.fc_layers[0][3], torch.nn.LeakyReLU)
    model.train(max_epochs=1, enable_progress_bar=False)
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    kwargs = config["attrs"]["init_params_"]["kwargs"]["kwargs"]
    assert kwargs["var_activation"] == {"__torch__": "torch.nn.functional.softplus"}
    again = VAE.load(tmp_path / "m", adata=plain.copy())
    assert isinstance(again.module.z_encoder.encoder.fc_layers[0][3], torch.nn.LeakyReLU)
    assert again.module.z_encoder.var_activation is torch.nn.functional.softplus
    np.testing.assert_array_equal(
        again.get_latent_representation(), model.get_latent_representation()
    )
    VAE.setup_anndata(plain)
    with pytest.warns(UserWarning, match=r"var_activation.*trains, but `save\(\)` refuses"):
        own = VAE(plain, var_activation=lambda x: torch.exp(x) + 1e-4)  # said when built
    with pytest.raises(TypeError, match=r"var_activation.*never code"):
        own.save(tmp_path / "own")
    assert not (tmp_path / "own").exists()


def test_save_without_checksums_loads_with_a_warning(small_save, tmp_path):
    """A save that records no checksum at all (weights rewritten without the config's digest,
    ``weights_sha256`` dropped) is not refused, but its load says that edits go unnoticed; a
    save with its checksums loads without that warning."""
    path, adata = small_save
    shutil.copytree(path, tmp_path / "m")
    as_saved_before_config_checksum(tmp_path / "m")
    _edit_config(tmp_path / "m", lambda c: c.pop("weights_sha256"))
    with pytest.warns(UserWarning, match="records no checksums.*save\\(\\)` it again"):
        model = VAE.load(tmp_path / "m", adata=adata.copy())
    reference = VAE.load(path, adata=adata.copy())
    np.testing.assert_array_equal(
        model.get_latent_representation(), reference.get_latent_representation()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        VAE.load(path, adata=adata.copy())


def test_load_names_the_counts_layer_the_model_reads(small_save, tmp_path):
    """A model set up with a counts layer, loaded onto data without it: the error names that
    layer and how to fill it (neither load nor the methods take `layer=`)."""
    _, clean = small_save
    adata = clean.copy()
    adata.layers["counts"] = adata.X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        VAE.setup_anndata(adata, layer="counts")
        model = VAE(adata)
        model.train(max_epochs=1, enable_progress_bar=False)
    model.save(tmp_path / "m")
    query = clean.copy()
    snap = snapshot(query)
    for call in (
        lambda: VAE.load(tmp_path / "m", adata=query),
        lambda: VAE.load(tmp_path / "m").get_latent_representation(query),
    ):
        with pytest.raises(KeyError, match=r"no 'counts'.*reads raw counts from adata.layers"):
            call()
        assert_unchanged(query, snap)


def test_pretrained_folder_checksum_is_checked(tmp_path):
    import hashlib

    from scdl.pretrained import _registry

    shutil.copytree(_registry._HERE / "pbmc_kang2018", tmp_path / "a")
    sha = hashlib.sha256((tmp_path / "a" / "model.safetensors").read_bytes()).hexdigest()
    scdl.pretrained.load(tmp_path / "a", sha256=sha)
    with pytest.raises(ValueError, match="Checksum mismatch"):
        scdl.pretrained.load(tmp_path / "a", sha256="0" * 64)
    with pytest.raises(ValueError, match="Checksum mismatch"):
        scdl.pretrained.load("pbmc_kang2018", sha256="0" * 64)


def test_pretrained_annotator_with_an_edited_config_is_refused(tmp_path):
    """The bundled annotator's config (labels, Unknown threshold) is covered by the checksum
    in its weights' header, in the package and in any copy of its folder."""
    from scdl.pretrained import _registry

    shutil.copytree(_registry._HERE / "pbmc_kang2018", tmp_path / "a")
    scdl.pretrained.load(tmp_path / "a")  # an untouched copy loads
    _edit_config(tmp_path / "a", lambda c: c.update(labels=c["labels"][::-1]))
    with pytest.raises(ValueError, match="config.json does not match the checksum"):
        scdl.pretrained.load(tmp_path / "a")


def test_an_annotator_whose_stored_cells_do_not_fit_its_genes_is_refused(tmp_path):
    """The annotator's reference sample, prototypes and sketch take their sizes from the
    file: gene indices beyond the vocabulary (which would make scipy read and write out of
    bounds when a query lacking genes refits on the sample), label codes beyond its types or
    misfitting shapes are refused at load, by name."""
    from scdl.models import CellTypeTransformer
    from scdl.pretrained import _registry

    edits = {
        "sample_indices": (lambda s: s["sample_indices"].fill_(10**6), r"must be <"),
        "sample_labels": (lambda s: s["sample_labels"].fill_(99), "label codes outside"),
        "sample_counts": (lambda s: s["sample_counts"].neg_(), "counts that are negative"),
        "float labels": (
            lambda s: s.update(sample_labels=s["sample_labels"].float()),
            "not whole numbers",
        ),
        "prototype_profiles": (
            lambda s: s.update(prototype_profiles=s["prototype_profiles"][:, :3].clone()),
            "prototypes have shapes",
        ),
        "sketch_cells": (
            lambda s: s.update(sketch_cells=s["sketch_cells"][..., :2].clone()),
            "sketch has buffers whose shapes",
        ),
    }
    for name, (edit, match) in edits.items():
        folder = tmp_path / name
        shutil.copytree(_registry._HERE / "pbmc_kang2018", folder)
        _resigned(folder, edit_weights=edit)
        with pytest.raises(ValueError, match=f"saved annotator's .*{match}"):
            CellTypeTransformer.load(folder, adata=False)
    folder = tmp_path / "untouched"
    shutil.copytree(_registry._HERE / "pbmc_kang2018", folder)
    _resigned(folder)
    CellTypeTransformer.load(folder, adata=False)  # re-signed but unedited: loads


def test_save_to_a_file_path_names_the_folder_it_needs(small_save, tmp_path):
    path, clean = small_save
    model = VAE.load(path, adata=clean.copy())
    target = tmp_path / "model.pt"
    target.write_bytes(b"user data")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="is a file; `save\\(\\)` writes a folder"):
            model.save(target, overwrite=overwrite)
    assert target.read_bytes() == b"user data"
    # a save's own file (the user meant that save): its folder and prefix, which run
    model.save(tmp_path / "m", prefix="v1_")
    with pytest.raises(FileExistsError, match=r"holds it, `'.*m'`, with `prefix='v1_'`"):
        model.save(tmp_path / "m" / "v1_config.json", overwrite=True)
    model.save(tmp_path / "m", prefix="v1_", overwrite=True)
    (tmp_path / "my_config.json").write_text("{}")  # a user's own file: no save's partner
    with pytest.raises(FileExistsError, match="Pass a folder path, e.g. without the file"):
        model.save(tmp_path / "my_config.json")


def test_save_without_overwrite_replaces_no_file(small_save, tmp_path):
    """As scvi-tools: a folder's files (a user's adata.h5ad, other weights) are replaced only
    with overwrite=True."""
    path, clean = small_save
    model = VAE.load(path, adata=clean.copy())
    for name in ("adata.h5ad", "model.safetensors"):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_bytes(b"user data")
        with pytest.raises(ValueError, match=f"already holds {name}; pass `overwrite=True`"):
            model.save(folder, save_anndata=True)
        assert (folder / name).read_bytes() == b"user data"
        assert not (folder / "config.json").exists()
    model.save(tmp_path / "adata")  # writes no adata.h5ad: the user's file is kept
    assert (tmp_path / "adata" / "adata.h5ad").read_bytes() == b"user data"
    with pytest.warns(UserWarning, match="was not saved with this model"):  # nor attached
        assert VAE.load(tmp_path / "adata").adata is None
    model.save(tmp_path / "empty_ok")  # an existing empty folder is fine
    assert (tmp_path / "empty_ok" / "config.json").is_file()


def test_overwriting_a_save_drops_its_stale_anndata(small_save, tmp_path):
    """load() attaches a folder's adata.h5ad: one left by an earlier save must not be
    attached to the model saved over it without save_anndata."""
    path, clean = small_save
    model = VAE.load(path, adata=clean.copy())
    model.save(tmp_path / "m", save_anndata=True)
    model.save(tmp_path / "m", overwrite=True)
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors"}
    assert VAE.load(tmp_path / "m").adata is None


def test_load_refuses_an_edited_saved_anndata(small_save, tmp_path):
    """adata.h5ad is the third file of a save: its checksum is in config.json."""
    import anndata as ad

    path, clean = small_save
    model = VAE.load(path, adata=clean.copy())
    model.save(tmp_path / "m", save_anndata=True)
    loaded = VAE.load(tmp_path / "m")  # the untouched save attaches its data
    dense = [sparse.csr_matrix(m.adata.X).toarray() for m in (loaded, model)]
    np.testing.assert_array_equal(*dense)
    edited = ad.read_h5ad(tmp_path / "m" / "adata.h5ad")
    edited.X = edited.X * 7  # every count changed, the file still valid
    edited.write_h5ad(tmp_path / "m" / "adata.h5ad")
    with pytest.raises(ValueError, match="adata.h5ad does not match the checksum"):
        VAE.load(tmp_path / "m")
    VAE.load(tmp_path / "m", adata=clean.copy())  # data passed by the caller: file not read
    (tmp_path / "m" / "adata.h5ad").unlink()
    with pytest.raises(FileNotFoundError, match="saved with its AnnData, but adata.h5ad"):
        VAE.load(tmp_path / "m")


def test_a_failed_anndata_write_leaves_no_partial_file(small_save, tmp_path):
    """A save whose AnnData anndata cannot write leaves no adata.h5ad that a later save or
    load would take as the model's data; a model loaded without data cannot save any."""
    path, clean = small_save
    model = VAE.load(path, adata=clean.copy())
    model.adata.obs["unwritable"] = [object()] * model.adata.n_obs  # anndata refuses these
    with pytest.raises(Exception, match="unwritable|object"):
        model.save(tmp_path / "m", save_anndata=True)
    assert not list((tmp_path / "m").iterdir())
    del model.adata.obs["unwritable"]
    model.save(tmp_path / "m", save_anndata=True)  # the retry needs no overwrite
    assert VAE.load(tmp_path / "m").adata.n_obs == clean.n_obs
    with pytest.raises(ValueError, match="loaded without data, so it has no cells to save"):
        VAE.load(path).save(tmp_path / "n", save_anndata=True)
    assert not (tmp_path / "n").exists()


def test_two_saves_in_one_folder_with_prefixes(small_save, tmp_path, capsys):
    """scvi-tools' ``prefix``: each save's files carry it, and load reads the one asked for."""
    import torch

    path, clean = small_save
    model = VAE.load(path, adata=clean.copy())
    other = VAE.load(path, adata=clean.copy())
    with torch.no_grad():
        next(other.module.parameters()).add_(1.0)  # another model, told apart by its weights
    model.save(tmp_path, prefix="a_", save_anndata=True)
    other.save(tmp_path, prefix="b_")
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "a_config.json",
        "a_model.safetensors",
        "a_adata.h5ad",
        "b_config.json",
        "b_model.safetensors",
    }
    a = VAE.load(tmp_path, prefix="a_")
    b = VAE.load(tmp_path, adata=clean.copy(), prefix="b_")
    assert a.adata is not None and a.adata.n_obs == clean.n_obs  # its own AnnData
    first = [next(m.module.parameters()).detach() for m in (model, other, a, b)]
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(first[1], first[3])
    assert VAE.load_registry(tmp_path, prefix="b_")["model_name"] == "VAE"
    # reference mapping from a prefixed save, as from the model itself
    padded = VAE.prepare_query_anndata(clean[:, ::-1].copy(), tmp_path, prefix="b_", inplace=False)
    assert list(padded.var_names) == list(clean.var_names)
    mapped = VAE.load_query_data(clean.copy(), tmp_path, prefix="b_")
    np.testing.assert_array_equal(next(mapped.module.parameters()).detach(), first[1])
    capsys.readouterr()
    VAE.view_setup_args(tmp_path, prefix="a_")  # scvi-tools' reads a pickled model.pt
    assert "batch_key" in capsys.readouterr().out
    (tmp_path / "tokenizer_config.json").write_text("{}")  # another tool's file: no save
    with pytest.raises(ValueError, match="already holds a saved model with prefix 'a_'"):
        model.save(tmp_path, prefix="a_")
    with pytest.raises(
        FileNotFoundError,
        match=r"prefix 'a_', 'b_': load one with `scdl\.models\.VAE\.load\(path, prefix='a_'\)`",
    ):
        VAE.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="No c_config.json in .* with this `prefix`"):
        VAE.load(tmp_path, prefix="c_")
    with pytest.raises(ValueError, match="path separator"):
        model.save(tmp_path, prefix="sub/a_")
    # adata=False: without data, though the save holds its AnnData (scvi-tools' meaning)
    assert VAE.load(tmp_path, adata=False, prefix="a_").adata is None
    with pytest.raises(TypeError, match="Expected an AnnData .* got str"):
        VAE.load(tmp_path, adata="cells.h5ad", prefix="a_")
    # backup_url: used by scvi-tools only when the save is missing; an scdl save is not fetched
    VAE.load(tmp_path, prefix="a_", backup_url="https://example.org/a_model.pt")
    with pytest.raises(FileNotFoundError, match="not downloaded from `backup_url`"):
        VAE.load(tmp_path / "nowhere", backup_url="https://example.org/model.pt")
