/* The ELBO Book: a live explorer of a two-dimensional latent space (chapter 6).
 *
 * Plain JavaScript and <canvas>; no framework, no network. Jupyter Book adds every .js file in _static/
 * to every page; this one does nothing on a page without a <div class="vaelib-explorer">, which
 * vaelib.explorer.explorer_html writes from an executed cell of the chapter. That div carries, inline in
 * an inert <script type="application/json" class="vaelib-explorer-data">, the decoder of the model
 * trained when the page was built (base64 little-endian float32, one entry per nn.Linear, a weight
 * (out, in) row-major) and the codes to draw behind the point (the test digits' posterior means and
 * their classes). Inline data, not fetch(), so that the page works from file:// too.
 *
 * The decoder is vaelib's built-in MLP, computed in float64:
 *   h = z;  h = relu(W h + b) for each hidden layer;  p = sigmoid(W_out h + b_out)
 * with a sigmoid that is exact for any |logit| (no overflow). It agrees with vaelib's float32
 * model.mean(z) = sigmoid(model.decode(z)) to about 1e-6 (tests/test_book_html.py checks 1e-5).
 *
 * Reader: drag the point over the plane (or click anywhere on it), or focus the plane (Tab) and press
 * the arrow keys (Shift: five times the step; Home: back to the start). The decoded 28x28 image and the
 * text "z = (z1, z2)" follow.
 *
 * API, on a page with an explorer (the first one on the page; all are in window.vaelibExplorer.instances):
 *   window.vaelibExplorer.decode(z)   -> Float64Array(x_dim): pixel probabilities p(x_j = 1 | z) for a
 *                                        code z = [z1, z2] (any finite code, not only the plane's);
 *   window.vaelibExplorer.logits(z)   -> Float64Array(x_dim): the decoder's logits for z;
 *   window.vaelibExplorer.getZ()      -> [z1, z2], the code shown now (also the getter .z);
 *   window.vaelibExplorer.setZ(z)     -> moves the point to z, clamped to the plane [-extent, extent]^2,
 *                                        redraws, and returns the code it moved to;
 *   window.vaelibExplorer.pixels()    -> Float64Array(x_dim): the probabilities of the image drawn now;
 *   window.vaelibExplorer.extent, .imageShape, .element (the div), .plane and .image (the canvases).
 * Each change of the code also fires a "vaelib-explorer-change" event on the div (detail: {z}).
 */
(function () {
  "use strict";
  if (window.__vaelibExplorerLoaded) return; // loaded twice: one set of explorers is enough
  window.__vaelibExplorerLoaded = true;

  var FORMAT = "vaelib-explorer/1";
  // matplotlib's tab10, the colours of vaelib.plot.latent_scatter, so the two views match.
  var TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  var STEP = 0.1; // arrow-key step in z units (Shift: 5 steps)

  function floats(b64, n, what) {
    var bin = atob(b64);
    if (bin.length !== 4 * n) {
      throw new Error("latent explorer: " + what + " holds " + bin.length / 4 + " floats, expected " + n);
    }
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var view = new DataView(bytes.buffer);
    var out = new Float64Array(n);
    for (var j = 0; j < n; j++) out[j] = view.getFloat32(4 * j, true); // little-endian float32
    return out;
  }

  // sigmoid(l) without overflow: exp only ever of a non-positive number.
  function sigmoid(l) {
    if (l >= 0) return 1 / (1 + Math.exp(-l));
    var e = Math.exp(l);
    return e / (1 + e);
  }

  function Decoder(payload) {
    var layers = payload.layers;
    if (!Array.isArray(layers) || layers.length < 1) throw new Error("latent explorer: no decoder layers");
    this.zDim = payload.z_dim;
    this.xDim = payload.x_dim;
    var nIn = this.zDim;
    this.layers = layers.map(function (layer, i) {
      var last = i === layers.length - 1;
      var act = last ? "sigmoid" : "relu";
      if (layer.in !== nIn || layer.activation !== act) {
        throw new Error("latent explorer: decoder layer " + i + " is not the built-in MLP's");
      }
      nIn = layer.out;
      return {
        nIn: layer.in, nOut: layer.out, relu: !last,
        w: floats(layer.weight, layer.in * layer.out, "weight " + i),
        b: floats(layer.bias, layer.out, "bias " + i),
      };
    });
    if (nIn !== this.xDim) throw new Error("latent explorer: the decoder does not output x_dim values");
  }

  Decoder.prototype.checkZ = function (z) {
    if (z == null || typeof z.length !== "number" || z.length !== this.zDim) {
      throw new TypeError("z must be an array of " + this.zDim + " numbers, got " + String(z));
    }
    var h = new Float64Array(this.zDim);
    for (var i = 0; i < this.zDim; i++) {
      var v = Number(z[i]);
      if (!isFinite(v)) throw new RangeError("z must be finite, got " + String(z[i]));
      h[i] = v;
    }
    return h;
  };

  Decoder.prototype.logits = function (z) {
    var h = this.checkZ(z);
    for (var k = 0; k < this.layers.length; k++) {
      var L = this.layers[k], w = L.w, out = new Float64Array(L.nOut);
      for (var o = 0; o < L.nOut; o++) {
        var s = L.b[o], row = o * L.nIn;
        for (var i = 0; i < L.nIn; i++) s += w[row + i] * h[i];
        out[o] = L.relu && s < 0 ? 0 : s;
      }
      h = out;
    }
    return h;
  };

  Decoder.prototype.decode = function (z) {
    var l = this.logits(z);
    for (var j = 0; j < l.length; j++) l[j] = sigmoid(l[j]);
    return l;
  };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  function fmt(v) {
    var s = (Math.abs(v) < 0.005 ? 0 : v).toFixed(2);
    return s.charAt(0) === "-" ? "\u2212" + s.slice(1) : s; // a real minus sign
  }

  function Explorer(root, payload) {
    if (payload.format !== FORMAT) throw new Error("latent explorer: unknown data format " + payload.format);
    if (payload.z_dim !== 2) throw new Error("latent explorer: needs z_dim = 2, got " + payload.z_dim);
    this.root = root;
    this.decoder = new Decoder(payload);
    this.extent = payload.extent;
    this.imageShape = payload.image_shape.slice();
    this.start = payload.start.slice();
    var pts = payload.points, n = pts.n;
    this.points = floats(pts.z, 2 * n, "codes");
    this.labels = null;
    if (pts.labels) {
      var bin = atob(pts.labels);
      this.labels = new Uint8Array(n);
      for (var i = 0; i < n; i++) this.labels[i] = bin.charCodeAt(i);
    }
    this.nPoints = n;
    this.z = this.start.slice();
    this.dragging = false;
    this.build();
    this.setZ(this.start);
  }

  Explorer.prototype.build = function () {
    var self = this, root = this.root;
    var fallback = root.querySelector(".vaelib-explorer-fallback");
    if (fallback) fallback.remove();

    var body = el("div", "vaelib-explorer-body");
    var left = el("div", "vaelib-explorer-panel");
    left.appendChild(el("div", "vaelib-explorer-caption", "latent plane: drag the point"));
    var plane = el("canvas", "vaelib-explorer-plane");
    plane.tabIndex = 0;
    plane.setAttribute("role", "application");
    plane.setAttribute("aria-roledescription", "latent plane");
    plane.setAttribute("aria-label",
      "Latent plane of the two-dimensional VAE, z1 across and z2 up, with the test digits' codes " +
      "drawn as dots coloured by class. Drag the point, or use the arrow keys, to choose the code z; " +
      "Shift with an arrow moves five times as far, Home returns to the start.");
    left.appendChild(plane);

    var legend = el("div", "vaelib-explorer-legend");
    legend.appendChild(el("span", "vaelib-explorer-legend-title",
      this.labels ? "test digits\u2019 codes \u03bc, by class:" : "test digits\u2019 codes \u03bc"));
    if (this.labels) {
      var list = el("ul", "vaelib-explorer-legend-list");
      list.setAttribute("aria-label", "colour of each digit class");
      for (var c = 0; c < 10; c++) {
        var item = el("li");
        var sw = el("span", "vaelib-explorer-swatch");
        sw.style.backgroundColor = TAB10[c];
        sw.setAttribute("aria-hidden", "true");
        item.appendChild(sw);
        item.appendChild(document.createTextNode(String(c)));
        list.appendChild(item);
      }
      legend.appendChild(list);
    }
    left.appendChild(legend);

    var right = el("div", "vaelib-explorer-panel vaelib-explorer-output");
    right.appendChild(el("div", "vaelib-explorer-caption", "decoder\u2019s mean image p(x | z)"));
    var image = el("canvas", "vaelib-explorer-image");
    image.width = this.imageShape[1];
    image.height = this.imageShape[0];
    image.setAttribute("role", "img");
    right.appendChild(image);
    var readout = el("output", "vaelib-explorer-z");
    readout.setAttribute("aria-live", "polite");
    right.appendChild(readout);
    right.appendChild(el("p", "vaelib-explorer-help",
      "Drag the point, or click the plane and use the arrow keys (Shift: bigger steps)."));

    body.appendChild(left);
    body.appendChild(right);
    root.appendChild(body);
    root.classList.add("vaelib-explorer-live");
    this.plane = plane;
    this.image = image;
    this.readout = readout;
    plane.setAttribute("aria-describedby", readout.id = "vaelib-explorer-z-" + Explorer.count++);

    plane.addEventListener("pointerdown", function (ev) {
      if (ev.button !== 0) return;
      self.dragging = true;
      try { plane.setPointerCapture(ev.pointerId); } catch (e) { /* synthetic pointer */ }
      plane.focus({ preventScroll: true });
      self.setZ(self.toZ(ev));
      ev.preventDefault();
    });
    plane.addEventListener("pointermove", function (ev) {
      if (self.dragging) self.setZ(self.toZ(ev));
    });
    var stop = function (ev) {
      self.dragging = false;
      try { plane.releasePointerCapture(ev.pointerId); } catch (e) { /* not captured */ }
    };
    plane.addEventListener("pointerup", stop);
    plane.addEventListener("pointercancel", stop);
    plane.addEventListener("keydown", function (ev) {
      var step = ev.shiftKey ? 5 * STEP : STEP, z = self.z.slice();
      switch (ev.key) {
        case "ArrowLeft": z[0] -= step; break;
        case "ArrowRight": z[0] += step; break;
        case "ArrowUp": z[1] += step; break;
        case "ArrowDown": z[1] -= step; break;
        case "Home": z = self.start.slice(); break;
        default: return;
      }
      ev.preventDefault(); // the arrows move the point, not the page
      self.setZ(z);
    });

    // Redraw when the theme (html[data-theme]) or the size changes.
    new MutationObserver(function () { self.background = null; self.draw(); })
      .observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
    if (window.ResizeObserver) {
      new ResizeObserver(function () { self.draw(); }).observe(plane);
    }
  };
  Explorer.count = 0;

  // Plot area of the plane, in canvas pixels: margins leave room for ticks and axis names.
  Explorer.prototype.layout = function () {
    var dpr = window.devicePixelRatio || 1;
    var css = this.plane.clientWidth || 320;
    var W = Math.max(1, Math.round(css * dpr));
    var left = 38 * dpr, bottom = 32 * dpr, top = 8 * dpr, right = 8 * dpr;
    var side = Math.max(10, Math.min(W - left - right, W - top - bottom));
    return { dpr: dpr, W: W, x0: left, y0: top, side: side };
  };

  Explorer.prototype.toPx = function (L, z) {
    var R = this.extent;
    return [L.x0 + (z[0] + R) / (2 * R) * L.side, L.y0 + (R - z[1]) / (2 * R) * L.side];
  };

  Explorer.prototype.toZ = function (ev) {
    // client coordinates -> canvas pixels, inside the border (the drawing fills the content box)
    var c = this.plane, rect = c.getBoundingClientRect(), L = this.layout();
    var scale = L.W / (c.clientWidth || 1);
    var px = (ev.clientX - rect.left - c.clientLeft) * scale;
    var py = (ev.clientY - rect.top - c.clientTop) * scale, R = this.extent;
    return [(px - L.x0) / L.side * 2 * R - R, R - (py - L.y0) / L.side * 2 * R];
  };

  Explorer.prototype.colours = function () {
    var cs = getComputedStyle(this.root);
    function v(name, dflt) { var s = cs.getPropertyValue(name).trim(); return s || dflt; }
    return {
      bg: v("--vx-plane-bg", "#ffffff"), ink: v("--vx-ink", "#222222"), muted: v("--vx-muted", "#666666"),
      grid: v("--vx-grid", "#e6e6e6"), ring: v("--vx-ring", "#999999"), marker: v("--vx-marker", "#000000"),
      markerFill: v("--vx-marker-fill", "#ffffff"), dotAlpha: parseFloat(v("--vx-dot-alpha", "0.75")),
    };
  };

  // The static layer (axes, prior circle, the codes), drawn once per size and theme.
  Explorer.prototype.drawBackground = function (L) {
    var C = this.colours(), R = this.extent, dpr = L.dpr;
    var bg = document.createElement("canvas");
    bg.width = L.W; bg.height = L.W;
    var g = bg.getContext("2d");
    g.fillStyle = C.bg;
    g.fillRect(0, 0, L.W, L.W);
    var self = this;
    function P(z1, z2) { return self.toPx(L, [z1, z2]); }
    // grid at the integers, axes through 0
    g.lineWidth = 1 * dpr;
    for (var t = Math.ceil(-R); t <= Math.floor(R); t++) {
      g.strokeStyle = t === 0 ? C.muted : C.grid;
      var a = P(t, -R), b = P(t, R);
      g.beginPath(); g.moveTo(a[0], a[1]); g.lineTo(b[0], b[1]); g.stroke();
      a = P(-R, t); b = P(R, t);
      g.beginPath(); g.moveTo(a[0], a[1]); g.lineTo(b[0], b[1]); g.stroke();
    }
    // radius 2: where a 2-D standard Gaussian puts 86 % of its mass
    var o = P(0, 0);
    g.strokeStyle = C.ring; g.setLineDash([4 * dpr, 3 * dpr]);
    g.beginPath(); g.arc(o[0], o[1], 2 / (2 * R) * L.side, 0, 2 * Math.PI); g.stroke();
    g.setLineDash([]);
    // the codes
    g.save();
    g.beginPath(); g.rect(L.x0, L.y0, L.side, L.side); g.clip();
    g.globalAlpha = C.dotAlpha;
    var r = 1.7 * dpr;
    for (var i = 0; i < this.nPoints; i++) {
      var p = P(this.points[2 * i], this.points[2 * i + 1]);
      g.fillStyle = this.labels ? TAB10[this.labels[i] % 10] : C.ink;
      g.beginPath(); g.arc(p[0], p[1], r, 0, 2 * Math.PI); g.fill();
    }
    g.restore();
    // frame, ticks, axis names
    g.strokeStyle = C.muted; g.lineWidth = 1 * dpr;
    g.strokeRect(L.x0, L.y0, L.side, L.side);
    g.fillStyle = C.ink;
    g.font = 12 * dpr + "px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
    g.textAlign = "center"; g.textBaseline = "top";
    for (t = Math.ceil(-R); t <= Math.floor(R); t++) {
      var q = P(t, -R);
      g.fillText(fmt(t).replace(".00", ""), q[0], q[1] + 4 * dpr);
    }
    g.textAlign = "right"; g.textBaseline = "middle";
    for (t = Math.ceil(-R); t <= Math.floor(R); t++) {
      q = P(-R, t);
      g.fillText(fmt(t).replace(".00", ""), q[0] - 5 * dpr, q[1]);
    }
    g.font = "italic " + 13 * dpr + "px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
    g.textAlign = "center"; g.textBaseline = "bottom";
    g.fillText("z\u2081", L.x0 + L.side / 2, L.W - 1 * dpr);
    g.save();
    g.translate(11 * dpr, L.y0 + L.side / 2); g.rotate(-Math.PI / 2);
    g.textBaseline = "middle";
    g.fillText("z\u2082", 0, 0);
    g.restore();
    return bg;
  };

  Explorer.prototype.draw = function () {
    var plane = this.plane, L = this.layout();
    if (plane.width !== L.W || plane.height !== L.W) {
      plane.width = L.W; plane.height = L.W; this.background = null;
    }
    if (!this.background) this.background = this.drawBackground(L);
    var g = plane.getContext("2d"), C = this.colours(), dpr = L.dpr;
    g.drawImage(this.background, 0, 0);
    var p = this.toPx(L, this.z);
    // cross-hairs to the axes, then the point
    g.strokeStyle = C.marker; g.globalAlpha = 0.35; g.lineWidth = 1 * dpr;
    g.beginPath();
    g.moveTo(L.x0, p[1]); g.lineTo(L.x0 + L.side, p[1]);
    g.moveTo(p[0], L.y0); g.lineTo(p[0], L.y0 + L.side);
    g.stroke();
    g.globalAlpha = 1;
    g.beginPath(); g.arc(p[0], p[1], 7 * dpr, 0, 2 * Math.PI);
    g.fillStyle = C.markerFill; g.fill();
    g.lineWidth = 2.5 * dpr; g.strokeStyle = C.marker; g.stroke();
    g.beginPath(); g.arc(p[0], p[1], 2 * dpr, 0, 2 * Math.PI);
    g.fillStyle = C.marker; g.fill();
    this.drawImage();
  };

  // The decoded image, dark ink on white like the book's figures (1 - p as grey level).
  Explorer.prototype.drawImage = function () {
    var h = this.imageShape[0], w = this.imageShape[1], px = this.current;
    var g = this.image.getContext("2d"), img = g.createImageData(w, h), d = img.data;
    for (var j = 0; j < h * w; j++) {
      var v = Math.round(255 * (1 - px[j]));
      d[4 * j] = v; d[4 * j + 1] = v; d[4 * j + 2] = v; d[4 * j + 3] = 255;
    }
    g.putImageData(img, 0, 0);
  };

  Explorer.prototype.setZ = function (z) {
    var zz = this.decoder.checkZ(z), R = this.extent;
    this.z = [Math.min(R, Math.max(-R, zz[0])), Math.min(R, Math.max(-R, zz[1]))];
    this.current = this.decoder.decode(this.z);
    var text = "z = (" + fmt(this.z[0]) + ", " + fmt(this.z[1]) + ")";
    this.readout.textContent = text;
    this.image.setAttribute("aria-label", "the decoder\u2019s image for " + text);
    this.draw();
    this.root.dispatchEvent(new CustomEvent("vaelib-explorer-change", { detail: { z: this.z.slice() } }));
    return this.z.slice();
  };

  function api(instances) {
    var first = instances[0];
    var a = {
      format: FORMAT,
      instances: instances,
      decode: function (z) { return first.decoder.decode(z); },
      logits: function (z) { return first.decoder.logits(z); },
      getZ: function () { return first.z.slice(); },
      setZ: function (z) { return first.setZ(z); },
      pixels: function () { return Float64Array.from(first.current); },
      extent: first.extent,
      imageShape: first.imageShape.slice(),
      element: first.root,
      plane: first.plane,
      image: first.image,
    };
    Object.defineProperty(a, "z", { get: function () { return first.z.slice(); }, enumerable: true });
    return a;
  }

  function init() {
    var instances = [];
    var roots = document.querySelectorAll("div.vaelib-explorer");
    for (var i = 0; i < roots.length; i++) {
      var root = roots[i];
      if (root.classList.contains("vaelib-explorer-live")) continue;
      var data = root.querySelector("script.vaelib-explorer-data");
      try {
        if (!data) throw new Error("latent explorer: no data in the page");
        instances.push(new Explorer(root, JSON.parse(data.textContent)));
      } catch (err) {
        var p = el("p", "vaelib-explorer-error", "The latent explorer could not start: " + err.message);
        root.appendChild(p);
        console.error(err); // a broken explorer is an error the book's browser test sees
      }
    }
    if (instances.length) window.vaelibExplorer = api(instances);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
