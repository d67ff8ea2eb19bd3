/**
 * Debian's Chromium (/usr/bin/chromium) driven by playwright-core, which downloads no browser of
 * its own. Shared by the report's browser test and bench/report-png.ts (the README screenshot).
 */
import { existsSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { type Browser, chromium, type Page } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';
export const chromiumPresent = existsSync(CHROMIUM);

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, headless: true });
}

/** Everything the page said or asked for while loading: the test requires silence and no network. */
export interface PageLog {
  console: { type: string; text: string }[];
  pageErrors: string[];
  requests: string[];
  failedRequests: string[];
}

/** Open a local HTML file through file:// and record its console, errors and requests until it has loaded. */
export async function openFile(
  browser: Browser,
  file: string,
  width = 1200,
): Promise<{ page: Page; log: PageLog }> {
  const page = await browser.newPage({ viewport: { width, height: 900 } });
  const log: PageLog = { console: [], pageErrors: [], requests: [], failedRequests: [] };
  page.on('console', (m) => log.console.push({ type: m.type(), text: m.text() }));
  page.on('pageerror', (e) => log.pageErrors.push(String(e)));
  page.on('request', (r) => log.requests.push(r.url()));
  page.on('requestfailed', (r) => log.failedRequests.push(`${r.url()}: ${r.failure()?.errorText}`));
  const response = await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });
  if (response && !response.ok()) log.failedRequests.push(`${file}: status ${response.status()}`);
  return { page, log };
}
