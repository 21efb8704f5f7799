// The ".ipynb" entry of a chapter's download menu (added by _ext/notebook_downloads.py) saves the
// notebook instead of opening a tab of raw JSON.
//
// * Over http(s) a `download` attribute on the link does it: sphinx-book-theme's link template has
//   no field for one, so this script adds it (and drops target="_blank", which only opened a tab).
// * From file:// browsers ignore `download` (every local file is its own origin) and cannot read the
//   file with fetch either. There, a click loads the notebook's text from the script the build writes
//   beside it (`<notebook>.ipynb.js`; a <script> may load from file://) and saves it through a Blob
//   URL, which belongs to the page and so does download. If that fails, the link opens as before.
(function () {
  var store = (window.elboBookNotebooks = window.elboBookNotebooks || {});

  function save(name, text) {
    var url = URL.createObjectURL(new Blob([text], { type: "application/x-ipynb+json" }));
    var a = document.createElement("a");
    a.href = url;
    a.download = name;
    a.style.display = "none";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
  }

  function fromFile(event) {
    if (window.location.protocol !== "file:") return;
    var link = event.currentTarget;
    var name = link.getAttribute("download");
    event.preventDefault();
    if (store[name]) return save(name, store[name]);
    var script = document.createElement("script");
    script.src = link.getAttribute("href") + ".js";
    script.onload = function () {
      if (store[name]) save(name, store[name]);
      else window.location.href = link.href;
    };
    script.onerror = function () { window.location.href = link.href; };
    document.head.appendChild(script);
  }

  function markNotebookLinks() {
    document.querySelectorAll("a.btn-download-notebook-button").forEach(function (link) {
      var path = (link.getAttribute("href") || "").split(/[?#]/)[0];
      link.setAttribute("download", decodeURIComponent(path.split("/").pop()));
      link.removeAttribute("target");
      link.addEventListener("click", fromFile);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", markNotebookLinks);
  } else {
    markNotebookLinks();
  }
})();
