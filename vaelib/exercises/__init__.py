"""Exercises that check themselves: a learner's function or number, tested on cases they do not see.

Each chapter's coding exercises end with a cell such as::

    def kl_gaussians(mu_q, logvar_q, mu_p, logvar_p):
        ...  # your code here

    check("ch2-gaussian-kl", kl_gaussians)

:func:`check` runs the learner's answer on hidden cases (drawn from a fixed seed, with shapes and
dtypes the exercise's text allows) and compares it with an independent reference. Its reply, a
:class:`Verdict`, says either that every case passes, or which case failed (what its inputs were
like, never their values) and by how much; it never shows the expected answer. An answer still
holding its ``...`` placeholder (a function that returns ``None`` or raises ``NotImplementedError``)
gets "not answered yet", not an error, so that the chapter runs from top to bottom before it is
done. :func:`names` lists the exercises; each chapter's are defined in ``vaelib/exercises/chNN.py``.

Everything runs offline, on the CPU, in well under a second per exercise.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._checker import Case, Exercise, Verdict, check, describe, names, register

for _obj in (Case, Exercise, Verdict, check, describe, names, register):
    _obj.__module__ = __name__  # documented, and found by the API tests, as vaelib.exercises.<name>
del _obj

__all__ = ["Case", "Exercise", "Verdict", "check", "describe", "names", "register"]

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module.startswith("ch"):
        importlib.import_module(f"{__name__}.{_module}")
del _module
