// Runs a TF.js graph model in Node.js with the pure-JS packages, for onnxfold export's check and
// the latency benchmark. Usage: node run_tfjs.js REQUEST.json
//
// REQUEST: {"model": DIR with model.json, "backend": "cpu" | "wasm",
//           "inputs": [{"node": "images", "shape": [1, 3, 416, 416], "file": "in0.bin"}],
//           "outputs": ["Identity:0", ...], "out_dir": DIR, "warmup": 0, "repeats": 0,
//           "result": FILE}
// Inputs and outputs are raw little-endian float32 files. Writes FILE: versions, the outputs'
// shapes and files, and the time of each repeat in milliseconds. (stdout is TF.js's chatter.)
// tf.loadGraphModel('file://...') needs tfjs-node (a native binary), so the files are read here
// and handed to tf.io.fromMemory.
'use strict';

const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const wasm = require('@tensorflow/tfjs-backend-wasm');
const tfconv = require('@tensorflow/tfjs-converter');

function readFloat32(file, shape) {
  const buf = fs.readFileSync(file);
  const data = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
  const n = shape.reduce((a, b) => a * b, 1);
  if (data.length !== n) {
    throw new Error(`${file}: expected ${n} float32 values for shape [${shape}], found ${data.length}`);
  }
  return tf.tensor(data, shape, 'float32');
}

function loadArtifacts(dir) {
  const json = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
  const specs = [];
  const shards = [];
  for (const group of json.weightsManifest) {
    specs.push(...group.weights);
    for (const p of group.paths) shards.push(fs.readFileSync(path.join(dir, p)));
  }
  const all = Buffer.concat(shards);
  return {
    modelTopology: json.modelTopology,
    format: json.format,
    generatedBy: json.generatedBy,
    convertedBy: json.convertedBy,
    signature: json.signature,
    userDefinedMetadata: json.userDefinedMetadata,
    modelInitializer: json.modelInitializer,
    weightSpecs: specs,
    weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
  };
}

async function main() {
  const req = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  if (req.backend === 'wasm') {
    // In Node the .wasm binaries are read from the package's dist folder.
    wasm.setWasmPaths(path.join(path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm')), '/'));
  }
  if (!(await tf.setBackend(req.backend))) throw new Error(`backend ${req.backend} failed to start`);
  await tf.ready();
  const model = await tfconv.loadGraphModel(tf.io.fromMemory(loadArtifacts(req.model)));
  const feeds = {};
  for (const inp of req.inputs) feeds[inp.node] = readFloat32(inp.file, inp.shape);
  // execute() runs graphs without control flow or dynamic shapes; others need executeAsync().
  let sync = true;
  const run = async () => {
    let out;
    if (sync) {
      try {
        out = model.execute(feeds, req.outputs);
      } catch (e) {
        sync = false;
      }
    }
    if (!sync) out = await model.executeAsync(feeds, req.outputs);
    return Array.isArray(out) ? out : [out];
  };
  for (let i = 0; i < (req.warmup || 0); i++) tf.dispose(await run());
  const times = [];
  for (let i = 0; i < (req.repeats || 0); i++) {
    const t0 = process.hrtime.bigint();
    const out = await run();
    await Promise.all(out.map((t) => t.data()));  // the time includes reading the results
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    tf.dispose(out);
  }
  const outs = await run();
  const result = [];
  for (let i = 0; i < outs.length; i++) {
    const file = path.join(req.out_dir, `out${i}.bin`);
    const data = await outs[i].data();
    fs.writeFileSync(file, Buffer.from(new Float32Array(data).buffer));
    result.push({ node: req.outputs[i], shape: outs[i].shape, dtype: outs[i].dtype, file });
  }
  const versions = {
    'tfjs-core': tf.version_core,
    'tfjs-converter': tfconv.version_converter,
    'tfjs-backend-wasm': wasm.version_wasm,
    node: process.versions.node,
  };
  const report = { backend: tf.getBackend(), versions, outputs: result, times_ms: times };
  fs.writeFileSync(req.result, JSON.stringify(report));
}

main().catch((e) => {
  process.stderr.write(`run_tfjs: ${e && e.message ? e.message : e}\n`);
  process.exit(1);
});
