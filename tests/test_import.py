import json
import subprocess
import sys

import pytest


def test_import_is_light():
    """`import scdl` and its namespaces must not load torch, scvi-tools or lightning."""
    code = (
        "import sys, scdl; scdl.tl; scdl.pl; scdl.datasets; scdl.data; "
        "heavy = [m for m in ('torch', 'scvi', 'lightning', 'jax') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout}"


@pytest.fixture(scope="module")
def fresh_import() -> dict:
    """What a fresh interpreter sees of scdl's namespace before and after reaching the models
    (one process for the tests below: each import of torch and scvi-tools costs seconds)."""
    code = (
        "import json, sys, scdl; names = dir(scdl); torch_before = 'torch' in sys.modules; "
        "scdl.models.VAE; torch_after = 'torch' in sys.modules; "
        "reached = [getattr(scdl, m).__name__ for m in ('dataloaders', 'module', 'train')]; "
        "print(json.dumps({'names': names, 'all': sorted(scdl.__all__), "
        "'torch_before': torch_before, 'torch_after': torch_after, 'reached': reached}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_models_load_on_demand(fresh_import):
    assert not fresh_import["torch_before"]
    assert fresh_import["torch_after"]


def test_namespace_lists_the_public_api_and_reaches_every_documented_submodule(fresh_import):
    """Tab completion offers the public API only; ``scdl.dataloaders`` / ``module`` /
    ``train`` (documented, as in scvi-tools) load on attribute access."""
    assert fresh_import["names"] == fresh_import["all"]
    assert fresh_import["reached"] == ["scdl.dataloaders", "scdl.module", "scdl.train"]


def test_every_public_name_has_an_api_page():
    """docs/api.md lists every name the submodules export (autosummary makes its page)."""
    import importlib
    import re
    from pathlib import Path

    api = Path(__file__).resolve().parents[1] / "docs" / "api.md"
    if not api.is_file():  # e.g. tests run from an sdist
        pytest.skip("no docs/ folder")
    listed = set(re.findall(r"^ {3}([a-z]+\.\w+)$", api.read_text(), re.MULTILINE))
    subs = ("tl", "pl", "models", "data", "datasets", "dataloaders", "module", "train")
    missing = [
        f"{sub}.{name}"
        for sub in (*subs, "pretrained")
        for name in importlib.import_module(f"scdl.{sub}").__all__
        if f"{sub}.{name}" not in listed
    ]
    assert not missing, f"public names without an API page in docs/api.md: {missing}"
