"""Sphinx configuration: API reference (autodoc) and the executed tutorials (myst-nb)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

# the tutorials live in ../tutorials (executed, with outputs); Sphinx reads them from a copy
_TUTORIALS = HERE / "tutorials"
_TUTORIALS.mkdir(exist_ok=True)
for _nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
    shutil.copy2(_nb, _TUTORIALS / _nb.name)

import scdl  # noqa: E402

project = "scdl"
author = "scdl developers"
copyright = "scdl developers"
version = release = scdl.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# notebooks are shown with their committed outputs; CI executes them in tests/
nb_execution_mode = "off"
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
# members of scdl's own mixins (predict, save, load, ...) are shown: the class template asks
# for inherited members and _skip_foreign_members drops scvi-tools' and torch's
autodoc_default_options = {"members": True}
autodoc_preserve_defaults = True  # `dtype=np.float64`, not `<class 'numpy.float64'>`
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_custom_sections = [("Writes", "returns_style")]

# no intersphinx: the build must work offline (CI reaches package registries only), so
# references to other packages' objects stay plain text; `-n` then reports scdl's own only
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(anndata|numpy|np|pandas|pd|scipy|torch|scvi|scanpy|sc|lightning|sklearn"
        r"|matplotlib|scib_metrics|os|pathlib|collections|typing)(\..*)?",
    ),
    (r"py:class", r"AnnData|Axes|Figure|Path|Kind|Modality"),  # bare names in signatures
    (r"py:meth", r"optimizer_step"),  # Lightning's docstring, inherited
]

html_theme = "furo"
html_title = f"scdl {release}"
html_static_path = ["_static"]
templates_path = ["_templates"]


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document scdl's own methods; skip those inherited from scvi-tools and torch."""
    target = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj
    module = getattr(target, "__module__", None)
    if what == "class" and module and not module.startswith("scdl"):
        return True
    return None


def _cite_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``:cite:`Key``` in docstrings renders as ``[Key]``, listed on the references page."""
    from docutils import nodes

    ref = nodes.reference(rawtext, f"[{text}]", refuri=f"../references.html#{text.lower()}")
    return [ref], []


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
    app.add_role("cite", _cite_role)
