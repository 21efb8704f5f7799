"""Sphinx extension: the book's glue to vaelib's API reference (book/reference.md).

1. **Public names resolve.** The reference documents each object where it is defined, so its
   targets are ``vaelib.model.VAE``, ``vaelib.elbo.elbo``, ``vaelib.model.VAE.config``, ... Chapters
   and docstrings naturally write the public names the package re-exports: ``vaelib.VAE``,
   ``vaelib.gaussian_kl``, ``vaelib.VAE.config``. When such a Python reference does not resolve, this
   extension imports what it names, finds the innermost named object (module, class or function)
   on the path and retries with that object's defining module and qualified name plus the rest of
   the path. A name that is not in vaelib still fails (a warning, hence an error under ``-W -n``).
2. **NamedTuple fields are documented once.** autodoc would list each field of a NamedTuple as an
   attribute "Alias for field number N", and napoleon documents the same fields from the class's
   ``Attributes:`` section: a duplicate-description warning. The aliases are skipped.
"""

from __future__ import annotations

import importlib
import re

from sphinx.application import Sphinx

_FIELD_ALIAS = re.compile(r"^Alias for field number \d+$")


def _named(obj) -> str | None:
    """Canonical dotted name of a module, class or function inside vaelib, else None."""
    if type(obj).__name__ == "module":
        name = obj.__name__
    else:
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
            return None
        name = f"{module}.{qualname}"
    return name if name == "vaelib" or name.startswith("vaelib.") else None


def canonical_name(target: str) -> str | None:
    """``vaelib.VAE.config`` -> ``vaelib.model.VAE.config``; None if not an object of vaelib."""
    parts = target.split(".")
    if parts[0] != "vaelib" or len(parts) < 2:
        return None
    try:
        obj = importlib.import_module("vaelib")
    except Exception:  # the reference page reports the import error itself
        return None
    named, rest = "vaelib", 1  # innermost named object so far, and where the unresolved rest starts
    for i, part in enumerate(parts[1:], start=1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            try:
                obj = importlib.import_module(".".join(parts[: i + 1]))
            except ImportError:
                return None
        name = _named(obj)
        if name is not None:
            named, rest = name, i + 1
    canonical = ".".join([named, *parts[rest:]])
    return None if canonical == target else canonical


def _resolve_public_name(app: Sphinx, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    canonical = canonical_name(node.get("reftarget", ""))
    if canonical is None:
        return None
    node = node.deepcopy()
    node["reftarget"] = canonical
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
    )


def _skip_namedtuple_aliases(app, what, name, obj, skip, options):
    if what == "class" and _FIELD_ALIAS.match((getattr(obj, "__doc__", None) or "").strip()):
        return True
    return None


def setup(app: Sphinx) -> dict:
    app.connect("missing-reference", _resolve_public_name)
    app.connect("autodoc-skip-member", _skip_namedtuple_aliases)
    return {"version": "1.1", "parallel_read_safe": True, "parallel_write_safe": True}
