// The --demo page's arithmetic, without the DOM or TF.js, so Node can test it against numpy:
// darknet's letterbox (with Pillow's bilinear resampling, as onnxfold/parity/images.py), the
// [region] and [yolo] decodes, darknet's correct_region_boxes and per-class greedy NMS.
'use strict';

(function (root, factory) {
  if (typeof module === 'object' && module.exports) module.exports = factory();
  else root.yolo = factory();
}(typeof self !== 'undefined' ? self : this, function () {
  // The picture's size inside a width x height letterbox, in integers, as darknet's
  // letterbox_image (and images.letterbox_size).
  function letterboxSize(w, h, width, height) {
    const idiv = (a, b) => (a - (a % b)) / b;
    if (width * h > height * w) return [idiv(w * height, h), height];
    return [width, idiv(h * width, w)];
  }

  // Pillow's Image.resize(..., BILINEAR) on 8-bit RGB, bit for bit (libImaging/Resample.c):
  // a triangle filter widened by the scale when shrinking (so it averages, antialiased),
  // coefficients in 22-bit fixed point, a horizontal pass then a vertical pass, each rounded
  // to 8 bits. src: RGBA bytes (alpha ignored); returns RGB bytes, nw x nh.
  const PRECISION_BITS = 22;

  function coeffs(inSize, outSize) {
    const scale = inSize / outSize;
    const filterscale = Math.max(scale, 1.0);
    const support = 1.0 * filterscale;
    const ksize = Math.ceil(support) * 2 + 1;
    const kk = new Int32Array(outSize * ksize);
    const bounds = new Int32Array(outSize * 2);
    const w = new Float64Array(ksize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const ss = 1.0 / filterscale;
      let xmin = Math.trunc(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      let ww = 0.0;
      for (let x = 0; x < xmax; x++) {
        let t = Math.abs((x + xmin - center + 0.5) * ss);
        t = t < 1.0 ? 1.0 - t : 0.0;
        w[x] = t;
        ww += t;
      }
      for (let x = 0; x < xmax; x++) {
        const k = ww !== 0.0 ? w[x] / ww : w[x];
        const f = k * (1 << PRECISION_BITS);
        kk[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + f) : Math.trunc(0.5 + f);
      }
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    return { kk, bounds, ksize };
  }

  function clip8(ss) {
    const v = ss >> PRECISION_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : v;
  }

  // One pass along x (horizontal) or y; src has `stride` bytes per pixel.
  function pass(src, w, h, stride, outW, outH, horizontal) {
    const { kk, bounds, ksize } = horizontal ? coeffs(w, outW) : coeffs(h, outH);
    const out = new Uint8Array(outW * outH * 3);
    const half = 1 << (PRECISION_BITS - 1);
    for (let yy = 0; yy < outH; yy++) {
      for (let xx = 0; xx < outW; xx++) {
        const i = horizontal ? xx : yy;
        const lo = bounds[i * 2];
        const n = bounds[i * 2 + 1];
        let s0 = half;
        let s1 = half;
        let s2 = half;
        for (let t = 0; t < n; t++) {
          const k = kk[i * ksize + t];
          const p = horizontal ? (yy * w + lo + t) * stride : ((lo + t) * w + xx) * stride;
          s0 += src[p] * k;
          s1 += src[p + 1] * k;
          s2 += src[p + 2] * k;
        }
        const o = (yy * outW + xx) * 3;
        out[o] = clip8(s0);
        out[o + 1] = clip8(s1);
        out[o + 2] = clip8(s2);
      }
    }
    return out;
  }

  function resizeBilinear(rgba, w, h, nw, nh) {
    let cur = rgba;
    let stride = 4;
    // Pillow 13 runs the vertical pass first when the height shrinks by more than twice what
    // the width does (older Pillows always start horizontally: one level off in a few pixels).
    if (h - nh > 0 && h - nh > (w - nw) * 2) {
      cur = pass(cur, w, h, stride, w, nh, false);
      return nw !== w ? pass(cur, w, nh, 3, nw, nh, true) : cur;
    }
    if (nw !== w) {
      cur = pass(cur, w, h, stride, nw, h, true);
      stride = 3;
    }
    if (nh !== h) {
      cur = pass(cur, nw, h, stride, nw, nh, false);
      stride = 3;
    }
    return stride === 3 ? cur : rgbOf(rgba, w, h);
  }

  function rgbOf(rgba, w, h) {
    const out = new Uint8Array(w * h * 3);
    for (let i = 0; i < w * h; i++) {
      out[i * 3] = rgba[i * 4];
      out[i * 3 + 1] = rgba[i * 4 + 1];
      out[i * 3 + 2] = rgba[i * 4 + 2];
    }
    return out;
  }

  // The network input: 1x3xHxW float32 RGB in [0, 1], the picture letterboxed into a 0.5 grey
  // field, centred as darknet's embed_image: offsets (W - nw) / 2 and (H - nh) / 2, rounded down.
  function letterbox(rgba, w, h, width, height) {
    const [nw, nh] = letterboxSize(w, h, width, height);
    const rgb = resizeBilinear(rgba, w, h, nw, nh);
    const plane = width * height;
    const data = new Float32Array(3 * plane).fill(0.5);
    const dx = (width - nw - ((width - nw) % 2)) / 2;
    const dy = (height - nh - ((height - nh) % 2)) / 2;
    for (let y = 0; y < nh; y++) {
      for (let x = 0; x < nw; x++) {
        const s = (y * nw + x) * 3;
        const d = (dy + y) * width + dx + x;
        data[d] = rgb[s] / 255;  // a Float32Array store rounds once, as numpy's float32 / 255
        data[plane + d] = rgb[s + 1] / 255;
        data[2 * plane + d] = rgb[s + 2] / 255;
      }
    }
    return { data, shape: [1, 3, height, width], inner: [nw, nh], offset: [dx, dy] };
  }

  const sigmoid = (x) => 1 / (1 + Math.exp(-x));

  // One head's output, NCHW [1, anchors*(5+classes), gh, gw], to boxes (x1, y1, x2, y2 as
  // fractions of the network input) and scores (objectness * class probability), ordered
  // anchor, row, column, as darknet. head: {kind: 'region'|'yolo', anchors: [[w, h], ...] (the
  // masked ones for yolo), classes, scaleXY (yolo)}; raw: the output is the last conv's
  // (logistic and softmax still to apply), else the darknet layer's buffer (already applied).
  function decodeHead(out, gh, gw, head, netW, netH, raw) {
    const C = head.classes;
    const A = head.anchors.length;
    const plane = gh * gw;
    const boxes = new Float64Array(A * plane * 4);
    const scores = new Float64Array(A * plane * C);
    const region = head.kind === 'region';
    const [uw, uh] = region ? [gw, gh] : [netW, netH];  // what anchors are divided by
    const sxy = region ? 1 : (head.scaleXY || 1);
    const probs = new Float64Array(C);
    for (let a = 0; a < A; a++) {
      const base = a * (5 + C) * plane;
      for (let row = 0; row < gh; row++) {
        for (let col = 0; col < gw; col++) {
          const at = (entry) => out[base + entry * plane + row * gw + col];
          let x = at(0);
          let y = at(1);
          let obj = at(4);
          if (raw) {
            x = sigmoid(x) * sxy - 0.5 * (sxy - 1);
            y = sigmoid(y) * sxy - 0.5 * (sxy - 1);
            obj = sigmoid(obj);
          }
          const bx = (col + x) / gw;
          const by = (row + y) / gh;
          const bw = Math.exp(at(2)) * head.anchors[a][0] / uw;
          const bh = Math.exp(at(3)) * head.anchors[a][1] / uh;
          const i = (a * gh + row) * gw + col;
          boxes.set([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2], i * 4);
          for (let c = 0; c < C; c++) probs[c] = at(5 + c);
          if (raw && region) {
            let m = -Infinity;
            for (let c = 0; c < C; c++) m = Math.max(m, probs[c]);
            let sum = 0;
            for (let c = 0; c < C; c++) sum += (probs[c] = Math.exp(probs[c] - m));
            for (let c = 0; c < C; c++) probs[c] /= sum;
          } else if (raw) {
            for (let c = 0; c < C; c++) probs[c] = sigmoid(probs[c]);
          }
          for (let c = 0; c < C; c++) scores[i * C + c] = obj * probs[c];
        }
      }
    }
    return { boxes, scores, count: A * plane };
  }

  // Boxes from fractions of the letterboxed input to pixels of the picture (darknet's
  // correct_region_boxes with the integer letterbox size).
  function toPicture(boxes, w, h, netW, netH) {
    const [nw, nh] = letterboxSize(w, h, netW, netH);
    const ox = (netW - nw) / 2 / netW;
    const oy = (netH - nh) / 2 / netH;
    const sx = nw / netW;
    const sy = nh / netH;
    const out = new Float64Array(boxes.length);
    for (let i = 0; i < boxes.length; i += 4) {
      out[i] = (boxes[i] - ox) / sx * w;
      out[i + 1] = (boxes[i + 1] - oy) / sy * h;
      out[i + 2] = (boxes[i + 2] - ox) / sx * w;
      out[i + 3] = (boxes[i + 3] - oy) / sy * h;
    }
    return out;
  }

  function iou(b, i, j) {
    const ix = Math.min(b[i + 2], b[j + 2]) - Math.max(b[i], b[j]);
    const iy = Math.min(b[i + 3], b[j + 3]) - Math.max(b[i + 1], b[j + 1]);
    if (ix <= 0 || iy <= 0) return 0;
    const inter = ix * iy;
    const area = (k) => (b[k + 2] - b[k]) * (b[k + 3] - b[k + 1]);
    return inter / (area(i) + area(j) - inter);
  }

  // Per class: keep scores > thresh, highest first, drop a box whose IoU with a kept one is
  // > iouThresh (darknet's do_nms_sort). Sorted by score, descending (ties: class, then index).
  function nms(boxes, scores, count, classes, thresh, iouThresh) {
    const dets = [];
    for (let c = 0; c < classes; c++) {
      const cand = [];
      for (let i = 0; i < count; i++) if (scores[i * classes + c] > thresh) cand.push(i);
      cand.sort((p, q) => scores[q * classes + c] - scores[p * classes + c] || p - q);
      const kept = [];
      for (const i of cand) {
        if (kept.every((k) => iou(boxes, i * 4, k * 4) <= iouThresh)) kept.push(i);
      }
      for (const i of kept) {
        dets.push({ index: i, class: c, score: scores[i * classes + c],
                    box: Array.from(boxes.subarray(i * 4, i * 4 + 4)) });
      }
    }
    dets.sort((p, q) => q.score - p.score || p.class - q.class || p.index - q.index);
    return dets;
  }

  // Every head's output -> detections in picture pixels. outputs[k]: {data, shape} for
  // meta.heads[k].
  function detect(outputs, meta, w, h, thresh, iouThresh) {
    const all = outputs.map((o, k) => decodeHead(o.data, o.shape[2], o.shape[3], meta.heads[k],
                                                 meta.width, meta.height, meta.head === 'raw'));
    const count = all.reduce((s, d) => s + d.count, 0);
    const C = meta.classes;
    const boxes = new Float64Array(count * 4);
    const scores = new Float64Array(count * C);
    let at = 0;
    for (const d of all) {
      boxes.set(d.boxes, at * 4);
      scores.set(d.scores, at * C);
      at += d.count;
    }
    return nms(toPicture(boxes, w, h, meta.width, meta.height), scores, count, C, thresh,
               iouThresh);
  }

  return { letterboxSize, resizeBilinear, letterbox, decodeHead, toPicture, nms, detect };
}));
