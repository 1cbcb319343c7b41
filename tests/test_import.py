import pytest
from conftest import session_part


def test_import_is_light(fresh_session):
    """`import scdl` and its namespaces must not load torch, scvi-tools or lightning."""
    part = session_part(fresh_session, "import")
    assert part["heavy"] == [], f"heavy modules imported: {part['heavy']}"


def test_models_load_on_demand(fresh_session):
    assert not session_part(fresh_session, "models")["scvi_before"]
    assert session_part(fresh_session, "models")["scvi_after"]


def test_namespace_lists_the_public_api_and_reaches_every_documented_submodule(fresh_session):
    """Tab completion offers the public API only; ``scdl.dataloaders`` / ``module`` /
    ``train`` (documented, as in scvi-tools) load on attribute access."""
    part = session_part(fresh_session, "import")
    assert part["names"] == part["all"]
    reached = session_part(fresh_session, "models")["reached"]
    assert reached == ["scdl.dataloaders", "scdl.module", "scdl.train"]


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


def _documented_parameters(doc: str) -> list[str] | None:
    """Names in a numpydoc ``Parameters`` section (``a, b`` entries split), in order."""
    import inspect

    lines = inspect.cleandoc(doc or "").splitlines()
    if "Parameters" not in lines:
        return None
    names = []
    for i, line in enumerate(lines[lines.index("Parameters") + 2 :]):
        following = lines[lines.index("Parameters") + 3 + i : lines.index("Parameters") + 4 + i]
        if following and following[0].strip() and set(following[0].strip()) == {"-"}:
            break  # the next section's title
        if line and not line.startswith(" "):
            names += [n.strip().lstrip("*") for n in line.split(":")[0].split(",")]
    return names


def _public_callables():
    import inspect

    import scdl
    from scdl import models

    for mod in (scdl.tl, scdl.pl):
        for name in mod.__all__:
            yield f"{mod.__name__}.{name}", getattr(mod, name)
    for class_name in models.__all__:
        cls = getattr(models, class_name)
        yield f"{class_name}.__init__", cls.__init__
        for name in dir(cls):
            raw = inspect.getattr_static(cls, name)
            owner = next(k for k in cls.__mro__ if name in vars(k))
            if (
                name.startswith("_")
                or isinstance(raw, property)
                or not callable(raw.__get__(None, cls) if hasattr(raw, "__get__") else raw)
            ):
                continue
            if owner.__module__.startswith("scdl"):  # scvi-tools' own are documented there
                yield f"{class_name}.{name}", getattr(cls, name)


def test_docstrings_list_every_parameter_in_the_signatures_order():
    """numpydoc as scanpy writes it: every parameter of a public function or method is in its
    ``Parameters`` section, in the signature's order, and nothing else is."""
    import inspect

    wrong = []
    for qualname, func in _public_callables():
        params = [
            p for p in inspect.signature(func).parameters.values() if p.name not in ("self", "cls")
        ]
        named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        variadic = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        owner = qualname.partition(".")[0]
        doc = func.__doc__
        if qualname.endswith(".__init__"):  # numpydoc: a class's parameters are in its docstring
            from scdl import models

            doc = getattr(models, owner).__doc__
        documented = _documented_parameters(doc)
        if documented is None:
            if named:
                wrong.append(f"{qualname}: no Parameters section for {named}")
            continue
        in_signature = [d for d in documented if d in named]
        if sorted(in_signature) != sorted(named) or in_signature != named:
            wrong.append(f"{qualname}: signature {named}, documented {documented}")
        extra = [d for d in documented if d not in named and d not in variadic]
        if extra:
            wrong.append(f"{qualname}: documents {extra}, which it does not take")
    assert not wrong, "\n".join(wrong)
