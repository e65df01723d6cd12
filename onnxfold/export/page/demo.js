// The --demo page: load the TF.js model on the best backend, letterbox a picture as darknet,
// run the model, decode its YOLO head (yolo.js) and draw the detections. Everything is read from
// this folder; nothing is sent anywhere.
//
// window.onnxfoldDemo is the page's state, for people and for tests: state ('loading', 'ready',
// 'error'), backend, runs (finished inferences), picture, inferenceMs, detections, message, and
// inputBase64() (the last input tensor's float32 bytes).
// URL parameters: ?thresh=0.25&iou=0.45 set the sliders, ?backend=cpu forces a backend.
'use strict';

(function () {
  const MAX_PIXELS = 40e6;  // a decoded picture takes 4 bytes per pixel, and again on a canvas
  const MAX_SIDE = 16384;  // Chromium's largest canvas side
  const BACKENDS = ['webgl', 'wasm', 'cpu'];
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const demo = window.onnxfoldDemo = {
    state: 'loading', backend: null, runs: 0, picture: null, inferenceMs: null,
    detections: [], message: '', inputBase64: () => '',
  };
  let meta = null;
  let model = null;
  let last = null;  // {bitmap, w, h, outputs}: sliders re-decode without running the model again

  function fail(text) {
    demo.message = text;
    $('message').textContent = text;
    $('message').classList.add('shown');
  }

  function clearMessage() {
    demo.message = '';
    $('message').textContent = '';
    $('message').classList.remove('shown');
  }

  function label(c) {
    return meta.labels ? meta.labels[c] : `class ${c}`;
  }

  async function pickBackend() {
    const forced = params.get('backend');
    const order = forced ? [forced] : BACKENDS;
    const why = [];
    tf.wasm.setWasmPaths(new URL('demo/tfjs/', location.href).href);
    for (const name of order) {
      try {
        if (await tf.setBackend(name)) {
          await tf.ready();
          const t = tf.tidy(() => tf.sum(tf.square(tf.tensor1d([1, 2, 3]))));
          const v = (await t.data())[0];
          t.dispose();
          if (v === 14) return { name, why };
          why.push(`${name}: computed 1+4+9 = ${v}`);
        } else {
          why.push(`${name}: did not start`);
        }
      } catch (e) {
        why.push(`${name}: ${e.message || e}`);
      }
    }
    throw new Error(`no TF.js backend works in this browser (${why.join('; ')})`);
  }

  function execute(input) {
    const names = meta.heads.map((h) => h.output);
    const feed = { [meta.input]: input };
    try {
      return Promise.resolve(model.execute(feed, names));
    } catch (e) {
      return model.executeAsync(feed, names);  // graphs with control flow need it
    }
  }

  async function run(tensor) {
    const input = tf.tensor(tensor.data, tensor.shape, 'float32');
    try {
      const t0 = performance.now();
      let outs = await execute(input);
      outs = Array.isArray(outs) ? outs : [outs];
      const datas = await Promise.all(outs.map((o) => o.data()));  // waits for the GPU too
      const ms = performance.now() - t0;
      const result = outs.map((o, k) => ({ data: datas[k], shape: o.shape }));
      tf.dispose(outs);
      return { outputs: result, ms };
    } finally {
      input.dispose();
    }
  }

  function redraw() {
    if (!last) return;
    const thresh = Number($('thresh').value);
    const iou = Number($('iou').value);
    $('thresh-value').textContent = thresh.toFixed(3);
    $('iou-value').textContent = iou.toFixed(2);
    const dets = yolo.detect(last.outputs, meta, last.w, last.h, thresh, iou);
    demo.detections = dets.map((d) => ({
      class: d.class, label: label(d.class), score: d.score, box: d.box,
    }));
    const cv = $('canvas');
    cv.width = last.w;
    cv.height = last.h;
    const g = cv.getContext('2d');
    g.drawImage(last.bitmap, 0, 0);
    const lw = Math.max(2, Math.round(Math.max(last.w, last.h) / 300));
    g.lineWidth = lw;
    g.font = `${Math.max(12, lw * 6)}px sans-serif`;
    g.textBaseline = 'top';
    for (const d of dets) {
      const hue = (d.class * 137) % 360;
      const [x1, y1, x2, y2] = d.box.map((v, i) => Math.min(Math.max(v, 0),
                                                              i % 2 ? last.h : last.w));
      g.strokeStyle = `hsl(${hue} 90% 45%)`;
      g.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = `${label(d.class)} ${d.score.toFixed(2)}`;
      const tw = g.measureText(text).width + 2 * lw;
      const th = Math.max(12, lw * 6) + lw;
      const ty = y1 >= th ? y1 - th : y1;
      g.fillStyle = `hsl(${hue} 90% 45%)`;
      g.fillRect(x1, ty, tw, th);
      g.fillStyle = '#fff';
      g.fillText(text, x1 + lw, ty + lw / 2);
    }
    const rows = dets.map((d) => `<tr><td>${escapeHtml(label(d.class))}</td>` +
      `<td>${d.score.toFixed(3)}</td><td>${d.box.map((v) => v.toFixed(1)).join(', ')}</td></tr>`);
    $('detections').innerHTML = '<tr><th>class</th><th>score</th><th>box x1, y1, x2, y2 ' +
      '(pixels)</th></tr>' + rows.join('') +
      (dets.length ? '' : '<tr><td colspan="3">no detection above the threshold</td></tr>');
    $('status').textContent = `${last.name}: ${last.w}×${last.h}; backend ${demo.backend}; ` +
      `inference ${demo.inferenceMs.toFixed(1)} ms; ${dets.length} detection` +
      `${dets.length === 1 ? '' : 's'}`;
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  // The picture's size from its header (an <img> decodes the pixels only when drawn), so a huge
  // picture is refused before it takes memory.
  function pictureSize(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve([img.naturalWidth, img.naturalHeight]);
      img.onerror = () => reject(new Error('not a picture this browser can read'));
      img.src = url;
    });
  }

  async function show(blob, name) {
    clearMessage();
    if (model === null) return;
    demo.state = 'loading';
    $('status').textContent = `${name}: reading…`;
    const url = URL.createObjectURL(blob);
    try {
      if (blob.size === 0) throw new Error('the file is empty');
      const [w, h] = await pictureSize(url);
      if (!w || !h) throw new Error('a picture without pixels');
      if (w * h > MAX_PIXELS || w > MAX_SIDE || h > MAX_SIDE) {
        throw new Error(`${w}×${h} pixels is too large: this page takes at most ` +
                        `${MAX_PIXELS / 1e6} million pixels and ${MAX_SIDE} on a side`);
      }
      // The pixels as the file stores them: no colour-profile conversion, no premultiplication.
      const bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none',
                                                     premultiplyAlpha: 'none' })
        .catch(() => { throw new Error('its pixels cannot be decoded (a damaged or cut file?)'); });
      const cv = new OffscreenCanvas(w, h);
      const g = cv.getContext('2d', { willReadFrequently: true });
      g.drawImage(bitmap, 0, 0);
      const rgba = g.getImageData(0, 0, w, h).data;
      const tensor = yolo.letterbox(rgba, w, h, meta.width, meta.height);
      $('status').textContent = `${name}: running on ${demo.backend}…`;
      const { outputs, ms } = await run(tensor);
      last = { bitmap, w, h, outputs, name };
      demo.picture = { name, width: w, height: h };
      demo.inferenceMs = ms;
      demo.inputBase64 = () => base64(tensor.data);
      redraw();
      demo.runs += 1;
      demo.state = 'ready';
    } catch (e) {
      demo.state = 'ready';
      demo.runs += 1;
      const why = String(e.message || e).replace(/\.+$/, '');
      fail(`Cannot use "${name}": ${why}. The picture shown is the previous one.`);
      if (last) redraw();  // the status line and canvas go back to the previous picture
      else $('status').textContent = 'no picture yet';
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  function base64(f32) {
    const bytes = new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }

  function wireInputs() {
    $('file').addEventListener('change', (ev) => {
      const f = ev.target.files[0];
      if (f) show(f, f.name);
    });
    const drop = $('drop');
    document.addEventListener('dragover', (ev) => {
      ev.preventDefault();
      drop.classList.add('over');
    });
    document.addEventListener('dragleave', () => drop.classList.remove('over'));
    document.addEventListener('drop', (ev) => {
      ev.preventDefault();
      drop.classList.remove('over');
      const f = ev.dataTransfer && ev.dataTransfer.files[0];
      if (f) show(f, f.name);
      else fail('The drop held no file: drop a picture file (PNG, JPEG, ...).');
    });
    for (const id of ['thresh', 'iou']) $(id).addEventListener('input', redraw);
  }

  async function main() {
    wireInputs();
    try {
      if (location.protocol === 'file:') {
        throw new Error('a page opened from a file cannot read the model beside it. Serve ' +
                        'this folder, e.g. python3 -m http.server -d OUTDIR, and open ' +
                        'http://127.0.0.1:8000/');
      }
      const res = await fetch('demo/meta.json');
      if (!res.ok) throw new Error(`demo/meta.json: HTTP ${res.status}`);
      meta = await res.json();
      $('thresh').value = params.get('thresh') || meta.thresh;
      $('iou').value = params.get('iou') || meta.iou;
      $('model').textContent = `${meta.source}: input ${meta.width}×${meta.height}, ` +
        `${meta.classes} classes, ${meta.heads.length > 1 ? meta.heads.length + ' ' : ''}` +
        `${meta.heads[0].kind} head${meta.heads.length > 1 ? 's' : ''} (` +
        `${meta.head === 'raw' ? 'raw: decoded here' : 'darknet'}); letterboxed as darknet, ` +
        'Pillow-bilinear resize, 0.5 grey fill';
      $('status').textContent = 'starting TF.js…';
      const be = await pickBackend();
      demo.backend = be.name;
      if (be.why.length) console.warn(`TF.js backends skipped: ${be.why.join('; ')}`);
      $('status').textContent = `loading the model on ${be.name}…`;
      model = await tf.loadGraphModel('tfjs/model.json');
      // A first run compiles the backend's kernels; the times shown are of later runs.
      await run({ data: new Float32Array(3 * meta.width * meta.height).fill(0.5),
                  shape: [1, 3, meta.height, meta.width] });
      $('about').innerHTML = `TF.js ${escapeHtml(tf.version_core)} on <code>` +
        `${escapeHtml(be.name)}</code> (tried in order: ${BACKENDS.join(', ')}).`;
      const sample = await fetch('demo/sample.png');
      await show(await sample.blob(), 'sample.png');
    } catch (e) {
      demo.state = 'error';
      fail(`The demo cannot start: ${e.message || e}`);
      $('status').textContent = 'stopped';
    }
  }

  main();
}());
