/* The ELBO Book: small reader conveniences (Jupyter Book adds every .js file in _static/ to every
   page). Checked in a browser by tests/test_phone.py.
   0. A box that scrolls sideways (a wide equation, table or output) fades out at each edge where more
      of it is hidden: _static/book.css draws the fade for the classes set here, which follow the
      scroll position.
   1. Each figure image is a link to itself, so a phone reader can tap a figure to read it at full size.
   2. The execution table's status (myst-nb writes an emoji, an empty box without an emoji font) reads
      "passed" or "failed", as a text badge styled in _static/book.css.
   3. Search results show formulas as text ("q_φ(z | x)"), not as raw TeX ("\(q_\phi(\bz \given \bx)\)"):
      Sphinx's search summary is the page's text, taken before MathJax runs. */
(function () {
  "use strict";

  // Boxes that scroll sideways when their content is too wide (_static/book.css).
  var SCROLLERS = ".bd-article mjx-container[display='true'], .bd-article span.math, .bd-article pre, " +
                  ".bd-article .pst-scrollable-table-container";

  function markScroll(box) {
    var hidden = box.scrollWidth - box.clientWidth;
    box.classList.toggle("scroll-more-right", hidden > 1 && box.scrollLeft < hidden - 1);
    box.classList.toggle("scroll-more-left", hidden > 1 && box.scrollLeft > 1);
  }

  function watchScroll() {
    // A box's overflow changes when its width changes (the window is resized or turned, a folded cell
    // is opened: a ResizeObserver sees each) and when its content's does (web fonts arrive, MathJax
    // typesets, creating the display equations' boxes).
    var observer = window.ResizeObserver && new ResizeObserver(function (entries) {
      entries.forEach(function (entry) { markScroll(entry.target); });
    });
    function markAll() {
      document.querySelectorAll(SCROLLERS).forEach(function (box) {
        markScroll(box);
        if (observer) observer.observe(box);
      });
    }
    markAll();
    if (document.fonts && document.fonts.ready) document.fonts.ready.then(markAll);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) MathJax.startup.promise.then(markAll);
    window.addEventListener("load", markAll);
    if (!observer) window.addEventListener("resize", markAll);
    document.addEventListener("scroll", function (event) {  // scroll events do not bubble: capture them
      var box = event.target;
      if (box.nodeType === 1 && box.matches(SCROLLERS)) markScroll(box);
    }, {capture: true, passive: true});
  }

  function linkFigures() {
    document.querySelectorAll(".bd-article img").forEach(function (img) {
      if (img.closest("a") || !img.getAttribute("src")) return;
      var link = document.createElement("a");
      link.href = img.getAttribute("src");
      link.className = "figure-full-size";
      link.title = "Open the figure at full size";
      img.parentNode.insertBefore(link, img);
      link.appendChild(img);
    });
  }

  function execStatusAsText() {
    document.querySelectorAll(".bd-article table").forEach(function (table) {
      var head = Array.from(table.querySelectorAll("thead th")).map(function (th) { return th.textContent.trim(); });
      var column = head.indexOf("Status");
      if (column < 0 || head.indexOf("Run Time (s)") < 0) return;
      table.querySelectorAll("tbody tr").forEach(function (row) {
        var cell = row.children[column];
        if (!cell) return;
        var status = cell.textContent.trim();
        var passed = status === "\u2705", failed = status === "\u274c";
        if (!passed && !failed) return;
        var badge = document.createElement("span");
        badge.className = "exec-status " + (passed ? "exec-status-passed" : "exec-status-failed");
        badge.textContent = passed ? "passed" : "failed";
        (cell.querySelector("p") || cell).replaceChildren(badge);
      });
    });
  }

  /* TeX to readable text: the book's macros and common symbols become Unicode, fractions a/b, and what
     is left of the markup (braces, spacing commands, \left, \mathrm...) is dropped. */
  var SYMBOLS = {
    alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", varepsilon: "ε", zeta: "ζ", eta: "η",
    theta: "θ", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", xi: "ξ", pi: "π", rho: "ρ", sigma: "σ",
    tau: "τ", phi: "φ", varphi: "φ", chi: "χ", psi: "ψ", omega: "ω", Gamma: "Γ", Delta: "Δ",
    Theta: "Θ", Lambda: "Λ", Sigma: "Σ", Phi: "Φ", Psi: "Ψ", Omega: "Ω",
    sum: "∑", prod: "∏", int: "∫", infty: "∞", nabla: "∇", partial: "∂", le: "≤", leq: "≤", ge: "≥",
    geq: "≥", ne: "≠", neq: "≠", approx: "≈", sim: "∼", propto: "∝", to: "→", rightarrow: "→",
    leftarrow: "←", mapsto: "↦", in: "∈", times: "×", cdot: "·", odot: "⊙", ldots: "…", dots: "…",
    cdots: "⋯", pm: "±", mid: "|", vert: "|", Vert: "‖", lVert: "‖", rVert: "‖", langle: "⟨",
    rangle: "⟩", top: "⊤", star: "⋆", ell: "ℓ", sqrt: "√", log: "log", exp: "exp", det: "det", min: "min",
    max: "max", tanh: "tanh", tfrac: "", dfrac: "",
    // the book's macros (_config.yml, mathjax3_config)
    bx: "x", bz: "z", bmu: "μ", bsigma: "σ", beps: "ε", btheta: "θ", bphi: "φ", bI: "I", KL: "D_KL",
    E: "𝔼", ELBO: "ℒ", N: "𝒩", R: "ℝ", Bern: "Bernoulli", diag: "diag", given: " | "
  };

  function texToText(tex) {
    var s = tex;
    s = s.replace(/\\kldiv\s*\{((?:[^{}]|\{[^{}]*\})*)\}\s*\{((?:[^{}]|\{[^{}]*\})*)\}/g, "\\KL($1 ‖ $2)");
    for (var i = 0; i < 3; i++) {  // nested fractions
      s = s.replace(/\\[dt]?frac\s*\{((?:[^{}]|\{[^{}]*\})*)\}\s*\{((?:[^{}]|\{[^{}]*\})*)\}/g, "($1)/($2)");
    }
    s = s.replace(/\\(?:[,;:!> ]|quad|qquad)/g, " ");
    s = s.replace(/\\(?:left|right|middle|bigl|bigr|Bigl|Bigr|big|Big|biggl|biggr)\b\s*\\?/g, "");
    s = s.replace(/\\(?:mathbf|mathrm|boldsymbol|operatorname|mathcal|mathbb|text|textrm|mathit|hat|tilde|bar)\b/g, "");
    s = s.replace(/\\([A-Za-z]+)/g, function (_, name) {
      return Object.prototype.hasOwnProperty.call(SYMBOLS, name) ? SYMBOLS[name] : name;
    });
    s = s.replace(/\\([{}|%&#_$])/g, "$1").replace(/[{}]/g, "").replace(/&/g, " ");
    return s.replace(/\s+/g, " ").trim();
  }

  function plainSearchSummaries() {
    if (typeof Search === "undefined" || !Search.htmlToText || Search.htmlToText.elboBook) return;
    var htmlToText = Search.htmlToText;
    Search.htmlToText = function (htmlString, anchor) {
      var text = htmlToText(htmlString, anchor);
      return text.replace(/\\\(([\s\S]*?)\\\)|\\\[([\s\S]*?)\\\]|\$\$([\s\S]*?)\$\$/g, function (_, a, b, c) {
        return " " + texToText(a || b || c || "") + " ";
      }).replace(/\\begin\{[a-z*]+\}([\s\S]*?)\\end\{[a-z*]+\}/g, function (_, body) {
        return " " + texToText(body) + " ";
      });
    };
    Search.htmlToText.elboBook = true;
  }

  window.elboBookTexToText = texToText;  // for tests/test_phone.py
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      watchScroll();
      linkFigures();
      execStatusAsText();
      plainSearchSummaries();
    });
  } else {
    watchScroll();
    linkFigures();
    execStatusAsText();
    plainSearchSummaries();
  }
})();
