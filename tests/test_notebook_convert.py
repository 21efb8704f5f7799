"""The MyST -> plain-Markdown conversion of the downloadable notebooks (_ext/notebook_convert.py), on a
small synthetic chapter, without a build.

The build resolves every number and glued value from Sphinx's environment (_ext/notebook_downloads.py,
checked on the built book by tests/test_notebook_downloads.py); here a StaticResolver gives them, so
these tests pin down what each role and directive becomes, and that the result is Markdown a stock
Jupyter renders: no MyST syntax left, Markdown inside <details> and <blockquote> parsed as Markdown
(CommonMark needs blank lines around it), display math never behind ">" quote markers.
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))

import notebook_convert as nc  # noqa: E402

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()

CHAPTER = '''---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

+++ {"tags": ["remove-cell"]}

$$
\\newcommand{\\bx}{\\mathbf{x}}
\\newcommand{\\Var}{\\operatorname{Var}}
$$

+++

(ch-demo)=
# A demo chapter

As {ref}`Chapter 1 <ch-one>` showed, and {ref}`sec-two` explains, with $\\bx$ and $\\kldiv{q}{p}$.
The bound {eq}`eq-bound` is {prf:ref}`thm-demo` {cite:p}`kingma2014auto`; see {py:func}`~vaelib.fit`
and {class}`vaelib.VAE`, and `{ref}` in code stays. The residual is {glue:text}`res:.1e` nats, about
{glue:md}`years:myst` years, and {glue:text}`missing:.2f` is not glued.
% a comment line

```{code-cell} ipython3
:tags: [remove-input]

from myst_nb import glue
glue("res", 2.309e-14, display=False)
```

## The bound

$$
\\ELBO \\le \\log p(\\bx)
$$ (eq-bound)

````{prf:theorem} The bound
:label: thm-demo

For every $q$,

```{math}
:label: eq-inner
a = b \\\\
c = d
```
````

```{prf:proposition}
An unlabelled one, numbered by its position.
```

````{prf:proof}
By Jensen,

$$
\\log \\E[Y] \\ge \\E[\\log Y].
$$
````

```{admonition} Learning goals
:class: tip

1. one with $\\bx$
2. two

$$
x = 1
$$
```

```{note} A note on the same line.
```

```{admonition} Hidden
:class: dropdown

Inside a *dropdown*.
```

```{glue:figure} fig-demo
:name: fig-demo
:alt: A plot [of] things

The caption, with $\\bx$ and {eq}`eq-bound`.
```

```{code-block} python
x = 1
```

```{list-table}
:header-rows: 1

* - name
  - value
* - a | b
  - $x$
```

```{unknown-thing} Its title
Some *content*.
```

## Exercises

````{exercise} A first exercise
:label: ex-one

Do it.
````

````{solution} ex-one
:class: dropdown

The *answer* is $42$.

$$
y = 2
$$
````

```{exercise}
:label: ex-two

Another.
```

````{solution-start} ex-two
:class: dropdown
````

Code follows.

```{code-cell} ipython3
print(42)
```

````{solution-end}
````
'''


def resolver() -> nc.StaticResolver:
    return nc.StaticResolver(
        xrefs={
            ("ref", "ch-one"): nc.Xref("Evidence", "chapter 1"),
            ("ref", "sec-two"): nc.Xref("The second section", "chapter 2, section 2.3", True),
            ("eq", "eq-bound"): "(4.1)",
            ("prf:ref", "thm-demo"): "Theorem 4.1",
        },
        numbers={("prf:theorem", "thm-demo"): "4.1", ("prf:proposition", 0): "4.1",
                 ("figure", "fig-demo"): "4.1", ("exercise", "ex-one"): "4.1", ("exercise", "ex-two"): "4.2"},
        equations={"eq-bound": "4.1", "eq-inner": "4.2"},
        sections=["4", "4.1", "4.2"],
        glued={"res": {"text/plain": "2.309e-14"}, "years": {"text/markdown": "$10^{14}$"},
               "fig-demo": {"image/png": PNG, "text/plain": "<Figure>"}},
        citations={("p", "kingma2014auto"): "[Kingma and Welling, 2014]"},
        works={"kingma2014auto": "Kingma and Welling [2014]: Auto-encoding variational Bayes."},
    )


MACROS = {"bx": "\\mathbf{x}", "ELBO": "\\mathcal{L}", "E": "\\mathbb{E}",
          "kldiv": ["D_{\\mathrm{KL}}\\left(#1 \\,\\middle\\|\\, #2\\right)", 2]}


@pytest.fixture(scope="module")
def converted():
    nb = jupytext.reads(CHAPTER, fmt="md:myst")
    out, converter = nc.convert_notebook(nb, resolver(), docname="book/demo", macros=MACROS,
                                         header="> **Demo**, https://example.org/repo")
    return nb, out, converter


def markdown_text(nb) -> str:
    return "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_valid_and_code_cells_unchanged(converted):
    source, out, converter = converted
    nbformat.validate(out)
    assert [(c.source, c.metadata) for c in out.cells if c.cell_type == "code"] == [
        (c.source, c.metadata) for c in source.cells if c.cell_type == "code"
    ]
    assert out.metadata["kernelspec"] == source.metadata["kernelspec"]
    ids = [c.id for c in out.cells]
    assert len(set(ids)) == len(ids)
    again, _ = nc.convert_notebook(jupytext.reads(CHAPTER, fmt="md:myst"), resolver(), docname="book/demo",
                                   macros=MACROS, header="> **Demo**, https://example.org/repo")
    assert nbformat.writes(again) == nbformat.writes(out), "two conversions differ"
    assert converter.unresolved == ["glue missing"]


def test_header_then_macros_replace_the_remove_cell(converted):
    _, out, _ = converted
    assert out.cells[0].source.startswith("> **Demo**")
    macros = out.cells[1].source
    assert "\\newcommand{\\bx}{\\mathbf{x}}" in macros
    assert "\\newcommand{\\kldiv}[2]{D_{\\mathrm{KL}}\\left(#1 \\,\\middle\\|\\, #2\\right)}" in macros
    assert "\\newcommand{\\Var}{\\operatorname{Var}}" in macros, "a macro only the dropped cell defined"
    assert macros.count("\\newcommand{\\bx}") == 1
    assert not any("remove-cell" in c.metadata.get("tags", []) for c in out.cells if c.cell_type == "markdown")
    assert out.cells[-1].source.startswith("**Works cited")
    assert "Kingma and Welling [2014]: Auto-encoding" in out.cells[-1].source


def test_no_myst_left(converted):
    _, out, _ = converted
    text = markdown_text(out)
    for pattern in (r"\{[\w:-]+\}`(?!\})", r"```\{", r":::\{", r"^:[\w-]+:", r"^\([\w-]+\)=\s*$", r"\{glue",
                    r"^%"):
        found = [m.group(0) for m in re.finditer(pattern, text.replace("`{ref}`", ""), re.M)]
        assert not found, (pattern, found)
    assert "`{ref}` in code stays" in text


def test_roles(converted):
    _, out, _ = converted
    text = markdown_text(out)
    assert "# 4. A demo chapter" in text
    assert "## 4.1. The bound" in text and "## 4.2. Exercises" in text
    assert "As Chapter 1 showed" in text, "an explicit 'Chapter 1' needs no '(chapter 1)'"
    assert "*The second section* (chapter 2, section 2.3) explains" in text
    assert "The bound (4.1) is Theorem 4.1 [Kingma and Welling, 2014]" in text
    assert "see `fit()`" in text and "and `vaelib.VAE`," in text
    assert "The residual is 2.3e-14 nats, about\n$10^{14}$ years" in text
    assert "(a value computed by the code of this notebook) is not glued" in text


def test_directives(converted):
    _, out, _ = converted
    text = markdown_text(out)
    assert "$$\n\\ELBO \\le \\log p(\\bx)\n\\tag{4.1}\n$$" in text
    assert "**Theorem 4.1 (The bound).** For every $q$," in text
    assert "$$\n\\begin{split}a = b \\\\\nc = d\\end{split}\n\\tag{4.2}\n$$" in text
    assert "**Proposition 4.1.** An unlabelled one" in text
    assert "*Proof.* By Jensen," in text and "\\E[\\log Y].\n$$\n\n∎" in text
    assert "<blockquote>\n\n**Learning goals**\n\n1. one with $\\bx$" in text
    assert "**Note**\n\nA note on the same line." in text
    assert "<summary><b>Hidden</b></summary>\n\nInside a *dropdown*.\n\n</details>" in text
    assert "```python\nx = 1\n```" in text
    assert "| name | value |\n|---|---|\n| a \\| b | $x$ |" in text
    assert "**Its title**\n\nSome *content*." in text
    assert "**Exercise 4.1 (A first exercise).** Do it." in text
    assert "<summary>Solution to Exercise 4.1 (A first exercise)</summary>\n\nThe *answer* is $42$." in text
    assert "**Exercise 4.2.** Another." in text
    assert "**Solution to Exercise 4.2.**" in text and "*End of the solution to Exercise 4.2.*" in text


def test_figure_is_an_attachment(converted):
    _, out, _ = converted
    cell = next(c for c in out.cells if "Figure 4.1" in c.source)
    assert cell.attachments == {"fig-demo.png": {"image/png": PNG}}
    assert "![A plot (of) things](attachment:fig-demo.png)" in cell.source
    assert "**Figure 4.1.** The caption, with $\\bx$ and (4.1)." in cell.source


def test_renders_as_markdown(converted):
    """What CommonMark (JupyterLab's renderer follows it) makes of the Markdown: the Markdown inside
    <details> and <blockquote> is parsed, and no display math sits behind a '>' quote marker."""
    _, out, _ = converted
    rendered = MarkdownIt("commonmark").render(markdown_text(out))
    assert "The <em>answer</em> is $42$." in rendered
    assert "<p><strong>Learning goals</strong></p>" in rendered
    assert "<li>one with $\\bx$</li>" in rendered
    assert not re.search(r"^>.*\$\$", markdown_text(out), re.M)


def test_macro_definitions():
    assert nc.macro_definitions({"a": "x", "b": ["#1+#2", 2], "c": ["#1", 1, "d"]}).split("\n") == [
        "\\newcommand{\\a}{x}", "\\newcommand{\\b}[2]{#1+#2}", "\\newcommand{\\c}[1][d]{#1}"]


@pytest.mark.parametrize("tex, wrapped", [
    ("x = 1", "x = 1"),
    ("a \\\\ b", "\\begin{split}a \\\\ b\\end{split}"),
    ("a\n\nb", "\\begin{aligned}a\\\\\nb\\end{aligned}"),
])
def test_display_math_wrapped_as_sphinx_does(tex, wrapped):
    assert nc.wrap_display_math(tex) == wrapped


def test_the_repository_is_named_where_the_book_says_how_to_get_it():
    """The repository URL of _config.yml (the one the notebooks' first cell and the pages' header use)
    is the one the preface, the reproducing appendix and the README name."""
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    url = config["repository"]["url"].rstrip("/")
    assert url.startswith("https://"), url
    assert config["html"]["use_repository_button"] is True
    for path in ("book/intro.md", "book/reproducing.md", "README.md"):
        text = (ROOT / path).read_text(encoding="utf-8")
        assert f"]({url})" in text or f"<{url}>" in text, f"{path} does not link {url}"
