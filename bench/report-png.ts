/**
 * The README's picture of a comparison report: a full-page screenshot of report.html in
 * headless Chromium (Debian's /usr/bin/chromium through playwright-core).
 *
 *   node --import tsx bench/report-png.ts <report-dir>/report.html docs/report.png
 *
 * The page must load silently (no console message, page error or request but the file), as in
 * test/eval/report-browser.test.ts.
 */
import { writeFile } from 'node:fs/promises';
import { launchChromium, openFile } from '../test/eval/chromium.js';

const [html, png] = process.argv.slice(2);
if (!html || !png) throw new Error('usage: report-png.ts <report.html> <out.png>');
const browser = await launchChromium();
try {
  const { page, log } = await openFile(browser, html, 1180);
  const noise = [
    ...log.console.map((m) => `console ${m.type}: ${m.text}`),
    ...log.pageErrors,
    ...log.failedRequests,
  ];
  if (noise.length || log.requests.length !== 1)
    throw new Error(`${html} did not load cleanly: ${noise.join('; ')}`);
  const shot = await page.screenshot({ fullPage: true });
  await writeFile(png, shot);
  console.log(`${png}: ${shot.length} bytes`);
} finally {
  await browser.close();
}
