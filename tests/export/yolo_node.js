// Runs the --demo page's yolo.js in Node for tests/test_demo_page.py.
// Usage: node yolo_node.js YOLO_JS REQUEST.json -> JSON on stdout.
// REQUEST: {"op": "resize" | "letterbox" | "decode" | "detect", ...}; byte/float arrays travel
// as base64 (float64 little-endian for model outputs, uint8 RGBA for pictures).
'use strict';

const fs = require('fs');
const yolo = require(process.argv[2]);
const req = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
const bytes = (b64) => new Uint8Array(Buffer.from(b64, 'base64'));
const f64 = (b64) => new Float64Array(bytes(b64).slice().buffer);
const b64 = (typed) => Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength)
  .toString('base64');

let res;
if (req.op === 'resize') {
  res = { rgb: b64(yolo.resizeBilinear(bytes(req.rgba), req.w, req.h, req.nw, req.nh)) };
} else if (req.op === 'letterbox') {
  const t = yolo.letterbox(bytes(req.rgba), req.w, req.h, req.width, req.height);
  res = { data: b64(t.data), shape: t.shape };
} else if (req.op === 'decode') {
  const d = yolo.decodeHead(f64(req.out), req.gh, req.gw, req.head, req.netW, req.netH, req.raw);
  res = { boxes: b64(d.boxes), scores: b64(d.scores) };
} else if (req.op === 'detect') {
  const outputs = req.outputs.map((o) => ({ data: f64(o.data), shape: o.shape }));
  res = { detections: yolo.detect(outputs, req.meta, req.w, req.h, req.thresh, req.iou) };
}
process.stdout.write(JSON.stringify(res));
