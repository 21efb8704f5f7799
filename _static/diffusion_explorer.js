/* The ELBO Book: the reverse process of chapter 12's two-dimensional diffusion model, run in the browser.
 *
 * Plain JavaScript and <canvas>; no framework, no network. Jupyter Book adds every .js file in _static/
 * to every page; this one does nothing on a page without a <div class="vaelib-diffusion">, which
 * vaelib.explorer.reverse_process_html writes from an executed cell of the chapter. That div carries,
 * inline in an inert <script type="application/json" class="vaelib-diffusion-data">, what
 * vaelib.diffusion.export_reverse_process exports (format "vaelib-diffusion/1": the DenoisingMLP's
 * nn.Linear layers as base64 little-endian float32, a weight (out, in) row-major; its embedding
 * frequencies omega; the log-SNR lambda at t = 1 - k/T for k = 0..T) plus the plane's extent, the number
 * of points n, a seed and, optionally, points of the true density drawn faintly behind. Inline data, not
 * fetch(), so that the page works from file:// too.
 *
 * The computation is vaelib's, in float64 from the float32 weights:
 *   network   eps(z; lambda): h = inp([z, sin(lambda omega), cos(lambda omega)]);
 *             per block h = h + W2 silu(W1 silu(h) + b1) + b2;  eps = out(silu(h)),  silu(x) = x/(1 + e^-x)
 *   step k    (k = 1..T, t = 1 - (k-1)/T, s = 1 - k/T; Diffusion.reverse and forward_posterior):
 *             log alpha = logsigmoid(lambda)/2, log sigma^2 = logsigmoid(-lambda),
 *             x^ = (z_t - sigma_t eps) / alpha_t,
 *             z_s = exp(log alpha_t - log alpha_s + log sigma_s^2 - log sigma_t^2) z_t
 *                   + alpha_s (-expm1(lambda_t - lambda_s)) x^
 *                   + exp((log sigma_s^2 + log(-expm1(lambda_t - lambda_s))) / 2) noise_k
 * with logsigmoid(x) = min(x, 0) - log1p(exp(-|x|)), as PyTorch computes it (no lambda overflows). On the
 * same noise it agrees with vaelib.diffusion.reverse_process of the same weights in float64 to rounding
 * (tests/test_book_html.py checks it on the built page).
 *
 * The noise comes from the script's own generator (mulberry32, and Box-Muller for normal draws), seeded
 * with the payload's seed: the first cloud is the same on every load; "New samples" continues the stream.
 * The n x T network evaluations run in slices of about 12 ms (the page stays responsive); meanwhile the
 * plane follows the computation from t = 1 to t = 0, and the status line says "computing".
 *
 * Reader: drag the slider (or focus it and use the arrow keys, Page Up/Down, Home, End) to see z_t from
 * t = 1 (pure noise, left) to t = 0 (the samples, right); "Play" runs it in about three seconds; "New
 * samples" draws new noise and recomputes.
 *
 * API, on a page with a sampler (the first one on the page; all are in window.vaelibDiffusion.instances):
 *   window.vaelibDiffusion.run(noise)     -> the trajectory for the given noise, synchronously, in vaelib's
 *       reverse_process layout: noise[0] is z_1, noise[k] the noise of step k; result[k] is z at
 *       t = 1 - k/T. noise is either nested arrays [T + 1][m][2] (result: nested arrays, the same shape)
 *       or a flat array or Float64Array of (T + 1) * m * 2 numbers in that row-major order (result: a
 *       flat Float64Array); any number of points m >= 1;
 *   window.vaelibDiffusion.eps(z, logsnr) -> [e1, e2], the network's predicted noise for one point z at
 *       log-SNR lambda (any finite numbers);
 *   window.vaelibDiffusion.setStep(k)     -> shows step k (t = 1 - k/T), clamped to 0..T and to the steps
 *       computed so far, moves the slider, redraws; returns the step shown;
 *   .step, .t                             -> the step shown and its time;
 *   .points()                             -> the cloud drawn now, [[x, y], ...] (n points, row .step of
 *                                            the trajectory);
 *   .noise()                              -> the noise of the current cloud, nested [T + 1][n][2]
 *                                            (run(noise()) gives the trajectory drawn);
 *   .resample()                           -> draws new noise and recomputes; returns a Promise that
 *                                            resolves (true) when the whole trajectory is computed;
 *   .whenReady(), .ready                  -> a Promise for the current computation, and whether it is done;
 *   .computeMs                            -> milliseconds of computation of the last finished trajectory
 *                                            (the slices' work, without the pauses between them);
 *   .play(), .pause(), .playing;
 *   .steps (T), .n, .extent, .logsnr, .element (the div), .plane (the canvas), .slider, .playButton,
 *   .resampleButton.
 * Each change of the step shown fires "vaelib-diffusion-change" on the div (detail: {step, t}); the end
 * of a computation fires "vaelib-diffusion-ready" (detail: {computeMs, wallMs}).
 */
(function () {
  "use strict";
  if (window.__vaelibDiffusionLoaded) return; // loaded twice: one set of samplers is enough
  window.__vaelibDiffusionLoaded = true;

  var FORMAT = "vaelib-diffusion/1";
  var SLICE_MS = 12; // work per slice before the page gets the thread back
  var PLAY_MS = 3000; // "Play" runs t = 1 -> 0 in this long

  function floats(b64, n, what) {
    var bin = atob(b64);
    if (bin.length !== 4 * n) {
      throw new Error("diffusion sampler: " + what + " holds " + bin.length / 4 + " floats, expected " + n);
    }
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var view = new DataView(bytes.buffer);
    var out = new Float64Array(n);
    for (var j = 0; j < n; j++) out[j] = view.getFloat32(4 * j, true); // little-endian float32
    return out;
  }

  // PyTorch's log_sigmoid: min(x, 0) - log1p(exp(-|x|)), finite for every finite x.
  function logsigmoid(x) {
    return Math.min(x, 0) - Math.log1p(Math.exp(-Math.abs(x)));
  }

  // PyTorch's silu: x / (1 + exp(-x)) (-> -0 for very negative x, no NaN).
  function silu(x) {
    return x / (1 + Math.exp(-x));
  }

  function finite(v, what) {
    var x = Number(v);
    if (typeof v === "boolean" || v === null || v === "" || !isFinite(x)) {
      throw new RangeError(what + " must be a finite number, got " + String(v));
    }
    return x;
  }

  // ---- the network: vaelib.diffusion.DenoisingMLP -----------------------------------------------------
  function Net(p) {
    var d = p.x_dim, K = p.omega.length, B = p.blocks, L = p.layers;
    if (!Array.isArray(L) || L.length !== 2 + 2 * B) {
      throw new Error("diffusion sampler: expected " + (2 + 2 * B) + " layers for " + B + " blocks");
    }
    var width = L[0].out;
    function layer(i, nIn, nOut) {
      var l = L[i];
      if (l.in !== nIn || l.out !== nOut) {
        throw new Error("diffusion sampler: layer " + i + " is " + l.in + " -> " + l.out +
                        ", expected " + nIn + " -> " + nOut);
      }
      return { w: floats(l.weight, nIn * nOut, "weight " + i), b: floats(l.bias, nOut, "bias " + i) };
    }
    this.d = d;
    this.K = K;
    this.width = width;
    this.omega = Float64Array.from(p.omega);
    this.inp = layer(0, d + 2 * K, width);
    this.blocks = [];
    for (var b = 0; b < B; b++) {
      this.blocks.push({ first: layer(1 + 2 * b, width, width), second: layer(2 + 2 * b, width, width) });
    }
    this.out = layer(L.length - 1, width, d);
    this.h = new Float64Array(width);
    this.a = new Float64Array(width);
    this.u = new Float64Array(width);
  }

  // The input layer's bias plus its embedding columns times (sin(lambda omega), cos(lambda omega)):
  // the same for every point at one log-SNR, so computed once per step.
  Net.prototype.inputBias = function (lam) {
    var d = this.d, K = this.K, W = this.width, nIn = d + 2 * K, w = this.inp.w;
    var emb = new Float64Array(2 * K), out = new Float64Array(W);
    for (var k = 0; k < K; k++) {
      var angle = lam * this.omega[k];
      emb[k] = Math.sin(angle);
      emb[K + k] = Math.cos(angle);
    }
    for (var o = 0; o < W; o++) {
      var s = this.inp.b[o], row = o * nIn + d;
      for (var j = 0; j < 2 * K; j++) s += w[row + j] * emb[j];
      out[o] = s;
    }
    return out;
  };

  // eps for the point z[zOff .. zOff + d), given inputBias(lambda); written to out[outOff .. outOff + d).
  Net.prototype.forward = function (z, zOff, bias, out, outOff) {
    var d = this.d, W = this.width, nIn = d + 2 * this.K;
    var h = this.h, a = this.a, u = this.u, wi = this.inp.w, o, i, s, row;
    for (o = 0; o < W; o++) {
      s = bias[o];
      row = o * nIn;
      for (i = 0; i < d; i++) s += wi[row + i] * z[zOff + i];
      h[o] = s;
    }
    for (var b = 0; b < this.blocks.length; b++) {
      var w1 = this.blocks[b].first.w, b1 = this.blocks[b].first.b;
      var w2 = this.blocks[b].second.w, b2 = this.blocks[b].second.b;
      for (i = 0; i < W; i++) a[i] = silu(h[i]);
      for (o = 0; o < W; o++) {
        s = b1[o];
        row = o * W;
        for (i = 0; i < W; i++) s += w1[row + i] * a[i];
        u[o] = silu(s);
      }
      for (o = 0; o < W; o++) {
        s = b2[o];
        row = o * W;
        for (i = 0; i < W; i++) s += w2[row + i] * u[i];
        h[o] += s;
      }
    }
    for (i = 0; i < W; i++) a[i] = silu(h[i]);
    var wo = this.out.w, bo = this.out.b;
    for (o = 0; o < d; o++) {
      s = bo[o];
      row = o * W;
      for (i = 0; i < W; i++) s += wo[row + i] * a[i];
      out[outOff + o] = s;
    }
  };

  // forward for four consecutive points at z[zOff ..] (eps to out[outOff ..]): the same sums in the same
  // order as forward, so the same numbers, but each weight is read once for four points (1.5 times as
  // fast in V8).
  Net.prototype.forward4 = function (z, zOff, bias, out, outOff) {
    var d = this.d, W = this.width, nIn = d + 2 * this.K, B = this.blocks.length;
    if (!this.h4) {
      this.h4 = [0, 1, 2, 3].map(function () { return new Float64Array(W); });
      this.a4 = [0, 1, 2, 3].map(function () { return new Float64Array(W); });
      this.u4 = [0, 1, 2, 3].map(function () { return new Float64Array(W); });
    }
    var h0 = this.h4[0], h1 = this.h4[1], h2 = this.h4[2], h3 = this.h4[3];
    var a0 = this.a4[0], a1 = this.a4[1], a2 = this.a4[2], a3 = this.a4[3];
    var u0 = this.u4[0], u1 = this.u4[1], u2 = this.u4[2], u3 = this.u4[3];
    var wi = this.inp.w, o, i, row, w, s0, s1, s2, s3;
    for (o = 0; o < W; o++) {
      s0 = s1 = s2 = s3 = bias[o];
      row = o * nIn;
      for (i = 0; i < d; i++) {
        w = wi[row + i];
        s0 += w * z[zOff + i]; s1 += w * z[zOff + d + i];
        s2 += w * z[zOff + 2 * d + i]; s3 += w * z[zOff + 3 * d + i];
      }
      h0[o] = s0; h1[o] = s1; h2[o] = s2; h3[o] = s3;
    }
    for (var b = 0; b < B; b++) {
      var w1 = this.blocks[b].first.w, b1 = this.blocks[b].first.b;
      var w2 = this.blocks[b].second.w, b2 = this.blocks[b].second.b;
      for (i = 0; i < W; i++) { a0[i] = silu(h0[i]); a1[i] = silu(h1[i]); a2[i] = silu(h2[i]); a3[i] = silu(h3[i]); }
      for (o = 0; o < W; o++) {
        s0 = s1 = s2 = s3 = b1[o];
        row = o * W;
        for (i = 0; i < W; i++) {
          w = w1[row + i];
          s0 += w * a0[i]; s1 += w * a1[i]; s2 += w * a2[i]; s3 += w * a3[i];
        }
        u0[o] = silu(s0); u1[o] = silu(s1); u2[o] = silu(s2); u3[o] = silu(s3);
      }
      for (o = 0; o < W; o++) {
        s0 = s1 = s2 = s3 = b2[o];
        row = o * W;
        for (i = 0; i < W; i++) {
          w = w2[row + i];
          s0 += w * u0[i]; s1 += w * u1[i]; s2 += w * u2[i]; s3 += w * u3[i];
        }
        h0[o] += s0; h1[o] += s1; h2[o] += s2; h3[o] += s3;
      }
    }
    for (i = 0; i < W; i++) { a0[i] = silu(h0[i]); a1[i] = silu(h1[i]); a2[i] = silu(h2[i]); a3[i] = silu(h3[i]); }
    var wo = this.out.w, bo = this.out.b;
    for (o = 0; o < d; o++) {
      s0 = s1 = s2 = s3 = bo[o];
      row = o * W;
      for (i = 0; i < W; i++) {
        w = wo[row + i];
        s0 += w * a0[i]; s1 += w * a1[i]; s2 += w * a2[i]; s3 += w * a3[i];
      }
      out[outOff + o] = s0; out[outOff + d + o] = s1; out[outOff + 2 * d + o] = s2; out[outOff + 3 * d + o] = s3;
    }
  };

  // ---- the reverse process: vaelib.diffusion.reverse_process -----------------------------------------
  function Sampler(p) {
    if (p.format !== FORMAT) throw new Error("diffusion sampler: unknown data format " + p.format);
    if (p.x_dim !== 2) throw new Error("diffusion sampler: needs x_dim = 2, got " + p.x_dim);
    var T = p.steps;
    if (!(T >= 1 && T === Math.floor(T))) throw new Error("diffusion sampler: bad number of steps " + T);
    if (!Array.isArray(p.logsnr) || p.logsnr.length !== T + 1) {
      throw new Error("diffusion sampler: expected " + (T + 1) + " log-SNRs");
    }
    this.net = new Net(p);
    this.d = p.x_dim;
    this.T = T;
    this.logsnr = p.logsnr.map(function (v) { return finite(v, "log-SNR"); });
    this.steps = [];
    for (var k = 1; k <= T; k++) {
      var lt = this.logsnr[k - 1], ls = this.logsnr[k];
      var logAlphaT = 0.5 * logsigmoid(lt), logvarT = logsigmoid(-lt);
      var logAlphaS = 0.5 * logsigmoid(ls), logvarS = logsigmoid(-ls);
      var oneMinus = -Math.expm1(lt - ls); // 1 - SNR(t)/SNR(s)
      this.steps.push({
        bias: this.net.inputBias(lt),
        sigmaT: Math.exp(0.5 * logvarT),
        invAlphaT: Math.exp(-logAlphaT),
        coefZ: Math.exp(logAlphaT - logAlphaS + logvarS - logvarT),
        coefX: Math.exp(logAlphaS) * oneMinus,
        scale: Math.exp(0.5 * (logvarS + Math.log(oneMinus))),
      });
    }
    this.eps = new Float64Array(4 * this.d); // the network's output for up to four points
  }

  // Step k (1..T) of the flat trajectory traj ((T + 1) * m * d) for points [from, to), noise alike.
  Sampler.prototype.step = function (k, traj, noise, m, from, to) {
    var c = this.steps[k - 1], d = this.d, eps = this.eps, net = this.net;
    var prev = (k - 1) * m * d, cur = k * m * d, j, i;
    for (var p = from; p < to; p += 4) {
      var count = Math.min(4, to - p);
      if (count === 4) net.forward4(traj, prev + p * d, c.bias, eps, 0);
      else for (j = 0; j < count; j++) net.forward(traj, prev + (p + j) * d, c.bias, eps, j * d);
      for (j = 0; j < count * d; j++) {
        i = p * d + j;
        var z = traj[prev + i];
        var xHat = (z - c.sigmaT * eps[j]) * c.invAlphaT;
        var loc = c.coefZ * z + c.coefX * xHat;
        traj[cur + i] = loc + c.scale * noise[cur + i];
      }
    }
  };

  Sampler.prototype.runFlat = function (noise, m) {
    var traj = new Float64Array(noise.length);
    traj.set(noise.subarray(0, m * this.d));
    for (var k = 1; k <= this.T; k++) this.step(k, traj, noise, m, 0, m);
    return traj;
  };

  // noise as documented (nested or flat) -> {flat: Float64Array, m, nested: bool}
  Sampler.prototype.readNoise = function (noise) {
    var T = this.T, d = this.d, flat, m, i, k, p;
    if (noise == null || typeof noise.length !== "number") {
      throw new TypeError("noise must be an array [T + 1][m][2] or a flat array of (T + 1) * m * 2 numbers");
    }
    var nested = noise.length > 0 && noise[0] != null && typeof noise[0] === "object";
    if (nested) {
      if (noise.length !== T + 1) {
        throw new RangeError("noise must have T + 1 = " + (T + 1) + " rows, got " + noise.length);
      }
      m = noise[0].length;
      if (!(m >= 1)) throw new RangeError("noise must hold at least one point");
      flat = new Float64Array((T + 1) * m * d);
      for (k = 0; k <= T; k++) {
        var row = noise[k];
        if (row == null || row.length !== m) throw new RangeError("noise[" + k + "] must hold " + m + " points");
        for (p = 0; p < m; p++) {
          var pt = row[p];
          if (pt == null || pt.length !== d) {
            throw new RangeError("noise[" + k + "][" + p + "] must be " + d + " numbers");
          }
          for (i = 0; i < d; i++) flat[(k * m + p) * d + i] = finite(pt[i], "noise[" + k + "][" + p + "][" + i + "]");
        }
      }
    } else {
      var per = (T + 1) * d;
      if (noise.length === 0 || noise.length % per !== 0) {
        throw new RangeError("a flat noise must hold a multiple of (T + 1) * 2 = " + per +
                             " numbers, got " + noise.length);
      }
      m = noise.length / per;
      flat = new Float64Array(noise.length);
      for (i = 0; i < noise.length; i++) flat[i] = finite(noise[i], "noise[" + i + "]");
    }
    return { flat: flat, m: m, nested: nested };
  };

  Sampler.prototype.run = function (noise) {
    var r = this.readNoise(noise), traj = this.runFlat(r.flat, r.m);
    return r.nested ? nest(traj, this.T + 1, r.m, this.d) : traj;
  };

  Sampler.prototype.epsAt = function (z, logsnr) {
    if (z == null || z.length !== this.d) throw new TypeError("z must be an array of " + this.d + " numbers");
    var zz = new Float64Array(this.d);
    for (var i = 0; i < this.d; i++) zz[i] = finite(z[i], "z[" + i + "]");
    var out = new Float64Array(this.d);
    this.net.forward(zz, 0, this.net.inputBias(finite(logsnr, "logsnr")), out, 0);
    return Array.from(out);
  };

  function nest(flat, rows, m, d) {
    var out = new Array(rows);
    for (var k = 0; k < rows; k++) {
      var row = new Array(m);
      for (var p = 0; p < m; p++) {
        var off = (k * m + p) * d;
        row[p] = Array.prototype.slice.call(flat, off, off + d);
      }
      out[k] = row;
    }
    return out;
  }

  // ---- the noise: mulberry32 and Box-Muller ---------------------------------------------------------
  function Normal(seed) {
    var a = seed >>> 0;
    this.uniform = function () { // mulberry32: uniform on [0, 1), 32 bits
      a = (a + 0x6d2b79f5) | 0;
      var t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }
  Normal.prototype.fill = function (out) {
    for (var i = 0; i < out.length; i += 2) {
      var r = Math.sqrt(-2 * Math.log(1 - this.uniform())), angle = 2 * Math.PI * this.uniform();
      out[i] = r * Math.cos(angle);
      if (i + 1 < out.length) out[i + 1] = r * Math.sin(angle);
    }
    return out;
  };

  // ---- the page's widget ---------------------------------------------------------------------------
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  function fmt(v, digits) {
    var s = (Math.abs(v) < 0.5 * Math.pow(10, -digits) ? 0 : v).toFixed(digits);
    return s.charAt(0) === "-" ? "\u2212" + s.slice(1) : s; // a real minus sign
  }

  function Explorer(root, payload) {
    this.root = root;
    this.sampler = new Sampler(payload);
    this.T = this.sampler.T;
    this.n = payload.n;
    if (!(this.n >= 1 && this.n === Math.floor(this.n))) throw new Error("diffusion sampler: bad n " + this.n);
    this.extent = finite(payload.extent, "extent");
    this.digits = this.T > 100 ? 3 : 2;
    this.data = null;
    this.nData = 0;
    if (payload.data) {
      this.nData = payload.data.m;
      this.data = floats(payload.data.x, 2 * this.nData, "data");
    }
    this.normal = new Normal(payload.seed);
    this.k = 0;
    this.computed = 0;
    this.ready = false;
    this.playing = false;
    this.computeMs = null;
    this.build();
    this.resample();
  }
  Explorer.count = 0;

  Explorer.prototype.build = function () {
    var self = this, root = this.root, id = Explorer.count++;
    var fallback = root.querySelector(".vaelib-diffusion-fallback");
    if (fallback) fallback.remove();

    var body = el("div", "vaelib-diffusion-body");
    var left = el("div", "vaelib-diffusion-panel");
    left.appendChild(el("div", "vaelib-diffusion-caption", "the reverse process: " + this.n + " points z\u209c"));
    var plane = el("canvas", "vaelib-diffusion-plane");
    plane.setAttribute("role", "img");
    left.appendChild(plane);
    var legend = el("div", "vaelib-diffusion-legend");
    var item = el("span", "vaelib-diffusion-key");
    var sw = el("span", "vaelib-diffusion-swatch vaelib-diffusion-swatch-points");
    sw.setAttribute("aria-hidden", "true");
    item.appendChild(sw);
    item.appendChild(document.createTextNode("the points z\u209c"));
    legend.appendChild(item);
    if (this.data) {
      item = el("span", "vaelib-diffusion-key");
      sw = el("span", "vaelib-diffusion-swatch vaelib-diffusion-swatch-data");
      sw.setAttribute("aria-hidden", "true");
      item.appendChild(sw);
      item.appendChild(document.createTextNode("samples of the data\u2019s density"));
      legend.appendChild(item);
    }
    left.appendChild(legend);

    var right = el("div", "vaelib-diffusion-panel vaelib-diffusion-controls");
    var label = el("label", "vaelib-diffusion-caption", "time t, from noise to samples");
    var slider = el("input", "vaelib-diffusion-slider");
    slider.type = "range";
    slider.min = "0";
    slider.max = String(this.T);
    slider.step = "1";
    slider.value = "0";
    slider.id = "vaelib-diffusion-slider-" + id;
    label.htmlFor = slider.id;
    right.appendChild(label);
    right.appendChild(slider);
    var ends = el("div", "vaelib-diffusion-ends");
    ends.setAttribute("aria-hidden", "true"); // the slider's aria-valuetext says the same
    ends.appendChild(el("span", null, "t = 1: noise"));
    ends.appendChild(el("span", null, "t = 0: samples"));
    right.appendChild(ends);
    var readout = el("output", "vaelib-diffusion-t");
    readout.htmlFor = slider.id;
    right.appendChild(readout);
    var buttons = el("div", "vaelib-diffusion-buttons");
    var play = el("button", "vaelib-diffusion-button vaelib-diffusion-play", "Play");
    play.type = "button"; // its label says what it does: "Play", or "Pause" while playing
    var again = el("button", "vaelib-diffusion-button vaelib-diffusion-resample", "New samples");
    again.type = "button";
    buttons.appendChild(play);
    buttons.appendChild(again);
    right.appendChild(buttons);
    var status = el("p", "vaelib-diffusion-status");
    // a polite live region, said twice per computation: "computing", then the time it took (the plane
    // and the t readout show the progress)
    status.setAttribute("role", "status");
    right.appendChild(status);
    right.appendChild(el("p", "vaelib-diffusion-help",
      "Drag the slider, or focus it and use the arrow keys (Home: t = 1, End: t = 0). " +
      "New samples draws new noise and runs the network again, here in your browser."));

    body.appendChild(left);
    body.appendChild(right);
    root.appendChild(body);
    root.classList.add("vaelib-diffusion-live");
    this.plane = plane;
    this.slider = slider;
    this.readout = readout;
    this.playButton = play;
    this.resampleButton = again;
    this.status = status;
    readout.id = "vaelib-diffusion-t-" + id;
    plane.setAttribute("aria-describedby", readout.id);

    slider.addEventListener("input", function () {
      self.follow = false;
      self.pause();
      var k = self.setStep(Number(slider.value));
      if (String(k) !== slider.value) slider.value = String(k); // beyond the steps computed so far
    });
    play.addEventListener("click", function () {
      if (self.playing) self.pause(); else self.play();
    });
    again.addEventListener("click", function () { self.resample(); });

    // Redraw when the theme (html[data-theme]) or the size changes.
    new MutationObserver(function () { self.background = null; self.draw(); })
      .observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
    if (window.ResizeObserver) {
      new ResizeObserver(function () { self.draw(); }).observe(plane);
    }
  };

  // Draws new noise, then computes the trajectory in slices; the plane follows the computation.
  Explorer.prototype.resample = function () {
    var self = this, n = this.n, d = 2, T = this.T;
    if (this.job) this.job.cancelled = true;
    this.pause();
    var noise = this.normal.fill(new Float64Array((T + 1) * n * d));
    var traj = new Float64Array(noise.length);
    traj.set(noise.subarray(0, n * d));
    this.noiseFlat = noise;
    this.traj = traj;
    this.computed = 0;
    this.ready = false;
    this.follow = true;
    this.playButton.disabled = true;
    this.root.classList.add("vaelib-diffusion-computing");
    this.root.setAttribute("aria-busy", "true");
    this.status.textContent = "computing\u2026";
    this.setStep(0);
    var job = { cancelled: false }, started = performance.now(), work = 0;
    this.job = job;
    this.promise = new Promise(function (resolve) {
      function slice() {
        if (job.cancelled) { resolve(false); return; }
        try {
          var t0 = performance.now(), end = t0 + SLICE_MS;
          do {
            self.sampler.step(self.computed + 1, traj, noise, n, 0, n);
            self.computed++;
          } while (self.computed < T && performance.now() < end);
          work += performance.now() - t0;
          if (self.follow) self.setStep(self.computed);
          if (self.computed < T) {
            setTimeout(slice, 0);
            return;
          }
          self.ready = true;
          self.computeMs = work;
          self.playButton.disabled = false;
          self.root.classList.remove("vaelib-diffusion-computing");
          self.root.removeAttribute("aria-busy");
          self.status.textContent = n + " points \u00d7 " + T + " steps, computed here in " +
            (work / 1000).toFixed(2) + " s";
          self.root.dispatchEvent(new CustomEvent("vaelib-diffusion-ready",
            { detail: { computeMs: work, wallMs: performance.now() - started } }));
          resolve(true);
        } catch (err) {
          self.status.textContent = "The sampler failed: " + err.message;
          console.error(err); // a broken sampler is an error the book's browser test sees
          resolve(false);
        }
      }
      setTimeout(slice, 0);
    });
    return this.promise;
  };

  Explorer.prototype.setStep = function (k) {
    k = Math.round(finite(k, "step"));
    k = Math.max(0, Math.min(k, this.computed));
    this.k = k;
    var t = (this.T - k) / this.T, ts = fmt(t, this.digits);
    this.slider.value = String(k);
    this.slider.setAttribute("aria-valuetext", "t = " + ts + ", step " + k + " of " + this.T);
    this.readout.textContent = "t = " + ts + "  (step " + k + " of " + this.T + ")";
    this.plane.setAttribute("aria-label",
      "Plane of the " + this.n + " points z at t = " + ts + " of the reverse process" +
      (k === 0 ? " (pure noise)" : k === this.T ? " (the samples)" : "") +
      (this.data ? ", over faint samples of the data's density" : "") + ".");
    this.draw();
    this.root.dispatchEvent(new CustomEvent("vaelib-diffusion-change", { detail: { step: k, t: t } }));
    return k;
  };

  Explorer.prototype.play = function () {
    if (!this.ready || this.playing) return;
    var self = this;
    if (this.k >= this.T) this.setStep(0);
    this.follow = false;
    this.playing = true;
    this.playButton.textContent = "Pause";
    var origin = performance.now() - this.k / this.T * PLAY_MS;
    function frame(now) {
      if (!self.playing) return;
      var k = Math.min(self.T, Math.floor((now - origin) / PLAY_MS * self.T));
      if (k > self.k) self.setStep(k);
      if (k >= self.T) self.pause(); else requestAnimationFrame(frame);
    }
    requestAnimationFrame(frame);
  };

  Explorer.prototype.pause = function () {
    if (!this.playing) return;
    this.playing = false;
    this.playButton.textContent = "Play";
  };

  Explorer.prototype.points = function () {
    var n = this.n, off = this.k * n * 2, out = new Array(n);
    for (var p = 0; p < n; p++) out[p] = [this.traj[off + 2 * p], this.traj[off + 2 * p + 1]];
    return out;
  };

  // Plot area of the plane, in canvas pixels: margins leave room for ticks and axis names.
  Explorer.prototype.layout = function () {
    var dpr = window.devicePixelRatio || 1;
    var css = this.plane.clientWidth || 340;
    var W = Math.max(1, Math.round(css * dpr));
    var left = 38 * dpr, bottom = 32 * dpr, top = 8 * dpr, right = 8 * dpr;
    var side = Math.max(10, Math.min(W - left - right, W - top - bottom));
    return { dpr: dpr, W: W, x0: left, y0: top, side: side };
  };

  Explorer.prototype.toPx = function (L, x, y) {
    var R = this.extent;
    return [L.x0 + (x + R) / (2 * R) * L.side, L.y0 + (R - y) / (2 * R) * L.side];
  };

  Explorer.prototype.colours = function () {
    var cs = getComputedStyle(this.root);
    function v(name, dflt) { var s = cs.getPropertyValue(name).trim(); return s || dflt; }
    return {
      bg: v("--vd-plane-bg", "#ffffff"), ink: v("--vd-ink", "#222222"), muted: v("--vd-muted", "#666666"),
      grid: v("--vd-grid", "#e6e6e6"), point: v("--vd-point", "#1f5fa8"), data: v("--vd-data", "#888888"),
      pointAlpha: parseFloat(v("--vd-point-alpha", "0.8")), dataAlpha: parseFloat(v("--vd-data-alpha", "0.35")),
    };
  };

  // The static layer (grid, axes, ticks, the data's samples), drawn once per size and theme.
  Explorer.prototype.drawBackground = function (L) {
    var C = this.colours(), R = this.extent, dpr = L.dpr, self = this;
    var bg = document.createElement("canvas");
    bg.width = L.W; bg.height = L.W;
    var g = bg.getContext("2d");
    g.fillStyle = C.bg;
    g.fillRect(0, 0, L.W, L.W);
    function P(x, y) { return self.toPx(L, x, y); }
    var tick = R >= 4 ? Math.ceil(R / 4) : R >= 1 ? 1 : 0.5 * Math.pow(10, Math.floor(Math.log10(R)));
    var ticks = [];
    for (var v = Math.ceil(-R / tick) * tick; v <= R + 1e-9; v += tick) ticks.push(Math.abs(v) < 1e-9 ? 0 : v);
    g.lineWidth = 1 * dpr;
    ticks.forEach(function (t) {
      g.strokeStyle = t === 0 ? C.muted : C.grid;
      var a = P(t, -R), b = P(t, R);
      g.beginPath(); g.moveTo(a[0], a[1]); g.lineTo(b[0], b[1]); g.stroke();
      a = P(-R, t); b = P(R, t);
      g.beginPath(); g.moveTo(a[0], a[1]); g.lineTo(b[0], b[1]); g.stroke();
    });
    if (this.data) {
      g.save();
      g.beginPath(); g.rect(L.x0, L.y0, L.side, L.side); g.clip();
      g.globalAlpha = C.dataAlpha;
      g.fillStyle = C.data;
      var r = 1.5 * dpr;
      for (var i = 0; i < this.nData; i++) {
        var p = P(this.data[2 * i], this.data[2 * i + 1]);
        g.beginPath(); g.arc(p[0], p[1], r, 0, 2 * Math.PI); g.fill();
      }
      g.restore();
    }
    g.strokeStyle = C.muted; g.lineWidth = 1 * dpr;
    g.strokeRect(L.x0, L.y0, L.side, L.side);
    g.fillStyle = C.ink;
    g.font = 12 * dpr + "px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
    var digits = tick >= 1 ? 0 : Math.max(1, -Math.floor(Math.log10(tick) + 1e-9));
    g.textAlign = "center"; g.textBaseline = "top";
    ticks.forEach(function (t) { var q = P(t, -R); g.fillText(fmt(t, digits), q[0], q[1] + 4 * dpr); });
    g.textAlign = "right"; g.textBaseline = "middle";
    ticks.forEach(function (t) { var q = P(-R, t); g.fillText(fmt(t, digits), q[0] - 5 * dpr, q[1]); });
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
    if (!this.traj) return;
    g.save();
    g.beginPath(); g.rect(L.x0, L.y0, L.side, L.side); g.clip();
    g.globalAlpha = C.pointAlpha;
    g.fillStyle = C.point;
    var off = this.k * this.n * 2, r = 2.2 * dpr;
    g.beginPath();
    for (var p = 0; p < this.n; p++) {
      var q = this.toPx(L, this.traj[off + 2 * p], this.traj[off + 2 * p + 1]);
      g.moveTo(q[0] + r, q[1]);
      g.arc(q[0], q[1], r, 0, 2 * Math.PI);
    }
    g.fill();
    g.restore();
  };

  function api(instances) {
    var first = instances[0];
    var a = {
      format: FORMAT,
      instances: instances,
      run: function (noise) { return first.sampler.run(noise); },
      eps: function (z, logsnr) { return first.sampler.epsAt(z, logsnr); },
      setStep: function (k) { first.follow = false; first.pause(); return first.setStep(k); },
      points: function () { return first.points(); },
      noise: function () { return nest(first.noiseFlat, first.T + 1, first.n, 2); },
      resample: function () { return first.resample(); },
      whenReady: function () { return first.promise; },
      play: function () { first.play(); },
      pause: function () { first.pause(); },
      steps: first.T,
      n: first.n,
      extent: first.extent,
      logsnr: first.sampler.logsnr.slice(),
      element: first.root,
      plane: first.plane,
      slider: first.slider,
      playButton: first.playButton,
      resampleButton: first.resampleButton,
    };
    Object.defineProperty(a, "step", { get: function () { return first.k; }, enumerable: true });
    Object.defineProperty(a, "t", { get: function () { return (first.T - first.k) / first.T; }, enumerable: true });
    Object.defineProperty(a, "ready", { get: function () { return first.ready; }, enumerable: true });
    Object.defineProperty(a, "playing", { get: function () { return first.playing; }, enumerable: true });
    Object.defineProperty(a, "computeMs", { get: function () { return first.computeMs; }, enumerable: true });
    return a;
  }

  function init() {
    var instances = [];
    var roots = document.querySelectorAll("div.vaelib-diffusion");
    for (var i = 0; i < roots.length; i++) {
      var root = roots[i];
      if (root.classList.contains("vaelib-diffusion-live")) continue;
      var data = root.querySelector("script.vaelib-diffusion-data");
      try {
        if (!data) throw new Error("diffusion sampler: no data in the page");
        instances.push(new Explorer(root, JSON.parse(data.textContent)));
      } catch (err) {
        var p = el("p", "vaelib-diffusion-error", "The diffusion sampler could not start: " + err.message);
        root.appendChild(p);
        console.error(err); // a broken sampler is an error the book's browser test sees
      }
    }
    if (instances.length) window.vaelibDiffusion = api(instances);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
