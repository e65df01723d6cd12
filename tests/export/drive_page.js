// Drives the --demo page in the system's Chromium (headless, via playwright-core) for
// tests/test_demo_browser.py. Usage: node drive_page.js REQUEST.json; writes REQUEST.result.
//
// REQUEST: {"playwright": DIR of playwright-core, "chromium": "/usr/bin/chromium", "url": ...,
//           "steps": [{"upload": FILE} | {"drop": NAME, "base64": ..., "type": MIME}, each with
//                     optional "screenshot": FILE and "input": true (read the input tensor)],
//           "result": FILE}
// After the page starts (its sample picture shown) and after each step, the result gets a
// snapshot of window.onnxfoldDemo, plus the page's console errors.
'use strict';

const fs = require('fs');

async function main() {
  const req = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const { chromium } = require(req.playwright);
  const browser = await chromium.launch({
    executablePath: req.chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-component-update', '--disable-default-apps', '--disable-sync',
           '--no-first-run', '--disable-dev-shm-usage'],
  });
  const snaps = [];
  const consoleErrors = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 1100 } });
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', (e) => consoleErrors.push(`pageerror: ${e.message}`));
    const timeout = req.timeout_ms || 180000;
    const settled = (n) => page.waitForFunction(
      (k) => window.onnxfoldDemo && (window.onnxfoldDemo.state === 'error' ||
        (window.onnxfoldDemo.state === 'ready' && window.onnxfoldDemo.runs >= k)),
      n, { timeout, polling: 100 });
    const snap = async (step) => {
      const s = await page.evaluate((withInput) => {
        const d = window.onnxfoldDemo;
        return { state: d.state, backend: d.backend, runs: d.runs, picture: d.picture,
                 inferenceMs: d.inferenceMs, detections: d.detections, message: d.message,
                 status: document.getElementById('status').textContent,
                 input: withInput ? d.inputBase64() : null };
      }, !!step.input);
      if (step.screenshot) await page.screenshot({ path: step.screenshot, fullPage: true });
      snaps.push(s);
      return s;
    };
    await page.goto(req.url);
    await settled(1);
    let s = await snap(req.first || {});
    for (const step of req.steps || []) {
      const runs = s.runs;
      if (step.upload) {
        await page.setInputFiles('#file', step.upload);
      } else if (step.drop) {
        await page.evaluate(({ name, b64, type }) => {
          const bin = atob(b64);
          const bytes = new Uint8Array(bin.length);
          for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], name, { type }));
          document.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true,
                                                         cancelable: true }));
        }, { name: step.drop, b64: step.base64, type: step.type || '' });
      }
      await settled(runs + 1);
      s = await snap(step);
    }
  } finally {
    await browser.close();
  }
  fs.writeFileSync(req.result, JSON.stringify({ snapshots: snaps, consoleErrors }));
}

main().catch((e) => {
  process.stderr.write(`drive_page: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
