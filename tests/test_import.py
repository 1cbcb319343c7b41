import subprocess
import sys


def test_import_is_light():
    """`import scdl` and its namespaces must not load torch, scvi-tools or lightning."""
    code = (
        "import sys, scdl; scdl.tl; scdl.pl; scdl.datasets; scdl.data; "
        "heavy = [m for m in ('torch', 'scvi', 'lightning', 'jax') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout}"


def test_models_load_on_demand():
    code = "import sys, scdl; scdl.models.VAE; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_namespace_lists_the_public_api_and_reaches_every_documented_submodule():
    """Tab completion offers the public API only; ``scdl.dataloaders`` / ``module`` /
    ``train`` (documented, as in scvi-tools) load on attribute access."""
    code = (
        "import scdl; names = dir(scdl); "
        "assert names == sorted(scdl.__all__), names; "
        "[getattr(scdl, m) for m in ('dataloaders', 'module', 'train')]; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
