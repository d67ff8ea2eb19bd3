/**
 * The comparison report as a browser sees it: `ptq compare` on the bundled TinyStories-656K
 * (rtn, gptq, hqq × int3/int4 g32 + rtn mxfp4; 512 evaluation tokens) writes report.html, which
 * headless Chromium (Debian's `chromium`) opens through file://. The page must load with no
 * console message, page error or request beyond the file itself; every chart's SVG must lay out
 * with a non-empty box and exactly the marks results.json calls for (one point per run, one cell
 * and one point per layer per run), each inside its SVG and placed in the order of its data;
 * the full-page screenshot must show the methods' colours.
 *
 * Without /usr/bin/chromium the tests are skipped, except under CI=true where they fail
 * (.ci/run installs it).
 */
// The page.evaluate callbacks run in Chromium and use its DOM (document, SVGPathElement, Image).
/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { compareCommand } from '../../src/cli/commands.js';
import { DEMO_MODEL, DEMO_TEXT } from '../../src/cli/demo.js';
import type { CompareResults } from '../../src/eval/compare.js';
import { paretoFrontier } from '../../src/eval/report.js';
import { CI, tempDir } from '../helpers.js';
import { CHROMIUM, chromiumPresent, launchChromium, openFile, type PageLog } from './chromium.js';

const skip = !chromiumPresent && !CI ? `${CHROMIUM} missing (apt-get install chromium)` : false;

/** What the page reports about one chart's SVG (client pixels). */
interface Chart {
  id: string;
  width: number;
  height: number;
  /** Centres of the `circle.pt` marks in document order, and whether each is on the frontier. */
  points: { x: number; y: number; pareto: boolean; area: number }[];
  cells: { area: number; fill: string }[];
  /** Rendered length of every <path> with a non-empty `d`, and how many have an empty one. */
  pathLengths: number[];
  emptyPaths: number;
  /** Marks and labels whose box leaves the SVG's box (by more than 1 px). */
  outside: string[];
  /** Legend swatch colours, in legend order. */
  legend: string[];
}

// The callbacks below run in the page: no named function inside them (tsx's esbuild would wrap
// it in a `__name` helper that exists only in Node).
function measureCharts(page: Page): Promise<Chart[]> {
  return page.evaluate(() =>
    [...document.querySelectorAll('figure')].map((fig) => {
      const svg = fig.querySelector('svg')!;
      const box = svg.getBoundingClientRect();
      const paths = [...svg.querySelectorAll('path')];
      const outside = [...svg.querySelectorAll('circle, rect, path, text, line')]
        .filter((e) => {
          const r = e.getBoundingClientRect();
          return (
            r.left < box.left - 1 ||
            r.top < box.top - 1 ||
            r.right > box.right + 1 ||
            r.bottom > box.bottom + 1
          );
        })
        .map((e) => `${e.tagName} ${e.textContent?.slice(0, 40)}`);
      return {
        id: fig.id,
        width: box.width,
        height: box.height,
        points: [...svg.querySelectorAll('circle.pt')].map((c) => {
          const r = c.getBoundingClientRect();
          return {
            x: r.x + r.width / 2,
            y: r.y + r.height / 2,
            area: r.width * r.height,
            pareto: c.classList.contains('pareto'),
          };
        }),
        cells: [...svg.querySelectorAll('rect.cell')].map((c) => {
          const r = c.getBoundingClientRect();
          return { area: r.width * r.height, fill: c.getAttribute('fill') ?? '' };
        }),
        pathLengths: paths
          .filter((p) => (p.getAttribute('d') ?? '') !== '')
          .map((p) => (p as SVGPathElement).getTotalLength()),
        emptyPaths: paths.filter((p) => (p.getAttribute('d') ?? '') === '').length,
        outside,
        // Swatches: the 10 × 10 rects the legend puts before each method name.
        legend: [...svg.querySelectorAll('rect[width="10"][height="10"]')].map(
          (r) => r.getAttribute('fill')!,
        ),
      };
    }),
  );
}

/** Decode a PNG in the page (an <img> drawn on a canvas) and count its pixels by colour. */
function pngColours(page: Page, png: Buffer, colours: string[]) {
  return page.evaluate(
    async ({ src, colours }) => {
      const img = new Image();
      img.src = src;
      await img.decode();
      const canvas = document.createElement('canvas');
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const ctx = canvas.getContext('2d')!;
      ctx.drawImage(img, 0, 0);
      const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      const wanted = new Map(colours.map((c) => [Number.parseInt(c.slice(1), 16), c]));
      const count: Record<string, number> = Object.fromEntries(colours.map((c) => [c, 0]));
      const distinct = new Set<number>();
      for (let i = 0; i < data.length; i += 4) {
        const rgb = (data[i]! << 16) | (data[i + 1]! << 8) | data[i + 2]!;
        distinct.add(rgb);
        const c = wanted.get(rgb);
        if (c) count[c]!++;
      }
      return { width: canvas.width, height: canvas.height, distinct: distinct.size, count };
    },
    { src: `data:image/png;base64,${png.toString('base64')}`, colours },
  );
}

describe('report.html in headless Chromium', { skip }, () => {
  let browser: Browser;
  let page: Page;
  let log: PageLog;
  let results: CompareResults;
  let charts: Map<string, Chart>;
  let screenshot: Buffer;

  before(async () => {
    assert.ok(chromiumPresent, `CI=true and ${CHROMIUM} is missing: apt-get install chromium (.ci/run does)`);
    const dir = tempDir('ptq-report-browser-');
    const output = path.join(dir, 'report');
    await compareCommand(
      DEMO_MODEL,
      {
        methods: ['rtn', 'gptq', 'hqq'],
        bits: [3, 4],
        formats: ['int', 'mxfp4'],
        groupSize: 32,
        text: DEMO_TEXT,
        maxTokens: 512,
        output,
        // A rendering test: GPTQ only needs some calibration inputs to give the heat map its
        // output-error column, so the bundled text serves (8 windows of 128 tokens).
        calib: DEMO_TEXT,
        nsamples: 8,
        seqlen: 128,
        seed: 0,
      },
      { json: true, log: () => {} },
    );
    results = JSON.parse(await readFile(path.join(output, 'results.json'), 'utf8'));
    browser = await launchChromium();
    ({ page, log } = await openFile(browser, path.join(output, 'report.html')));
    charts = new Map((await measureCharts(page)).map((c) => [c.id, c]));
    screenshot = await page.screenshot({ fullPage: true });
  });
  after(() => browser?.close());

  it('loads from file:// with an empty console, no page error and no request but the file', () => {
    assert.deepEqual(log.console, []);
    assert.deepEqual(log.pageErrors, []);
    assert.deepEqual(log.failedRequests, []);
    assert.equal(log.requests.length, 1);
    assert.match(log.requests[0]!, /^file:\/\/.*\/report\.html$/);
  });

  it('every chart lays out with a non-empty box, every mark and label inside its SVG', () => {
    assert.deepEqual([...charts.keys()], ['pareto-ppl', 'pareto-kld', 'heatmap', 'bits']);
    for (const c of charts.values()) {
      assert.ok(c.width >= 300 && c.height >= 200, `${c.id}: ${c.width} × ${c.height}`);
      assert.deepEqual(c.outside, [], c.id);
      assert.equal(c.emptyPaths, 0, `${c.id}: empty <path>`);
      for (const p of c.points) assert.ok(p.area > 0, `${c.id}: empty point`);
      for (const l of c.pathLengths) assert.ok(l > 0, `${c.id}: zero-length path`);
    }
  });

  it('the Pareto plots: one point per run in data order, the frontier outlined and drawn', () => {
    // rtn/gptq/hqq × int3/int4, plus rtn and gptq mxfp4 (hqq optimizes integer grids only).
    assert.equal(results.runs.length, 8);
    const methods = [...new Set(results.runs.map((r) => r.method))];
    for (const [id, key] of [
      ['pareto-ppl', 'perplexity'],
      ['pareto-kld', 'kld'],
    ] as const) {
      const c = charts.get(id)!;
      assert.equal(c.points.length, results.runs.length, id);
      const frontier = paretoFrontier(results.runs.map((r) => ({ x: r.bitsPerWeight, y: r[key] })));
      assert.deepEqual(
        c.points.flatMap((p, i) => (p.pareto ? [i] : [])),
        frontier,
        id,
      );
      // Screen x grows with bits/weight, screen y falls as the loss grows (both axes monotone).
      for (let i = 0; i < results.runs.length; i++) {
        for (let j = 0; j < results.runs.length; j++) {
          const [a, b] = [results.runs[i]!, results.runs[j]!];
          if (a.bitsPerWeight < b.bitsPerWeight)
            assert.ok(c.points[i]!.x < c.points[j]!.x, `${id} x ${i} ${j}`);
          if (a[key] < b[key]) assert.ok(c.points[i]!.y > c.points[j]!.y, `${id} y ${i} ${j}`);
        }
      }
      // The dashed step line through ≥ 2 frontier points has a length; one legend entry per method.
      assert.ok(frontier.length >= 2 && c.pathLengths.length === 1, id);
      assert.equal(c.legend.length, methods.length, id);
    }
  });

  it('the heat map has one coloured cell per layer per run; the bits chart one point per layer per run', () => {
    const marks = results.runs.reduce((s, r) => s + r.layers.length, 0);
    assert.equal(marks, 14 * 8);
    const heat = charts.get('heatmap')!;
    assert.equal(heat.cells.length, marks);
    for (const cell of heat.cells) assert.ok(cell.area > 0);
    // Errors differ over layers and grids: the log colour scale gives many distinct colours.
    assert.ok(new Set(heat.cells.map((c) => c.fill)).size > marks / 2);
    // Cells run over runs, then layers (all runs have the same layers here): a larger error is
    // never drawn lighter (luma of the rgb() fill, Rec. 601 weights).
    const errors = results.runs.flatMap((r) => r.layers.map((l) => l.relativeError));
    const luma = heat.cells.map((c) => {
      assert.match(c.fill, /^rgb\(\d+, \d+, \d+\)$/);
      const [r, g, b] = c.fill.match(/\d+/g)!.map(Number) as [number, number, number];
      return 0.299 * r + 0.587 * g + 0.114 * b;
    });
    for (let i = 0; i < marks; i++) {
      for (let j = 0; j < marks; j++) {
        if (errors[i]! < errors[j]!) assert.ok(luma[i]! >= luma[j]!, `cell ${i} vs ${j}`);
      }
    }
    // Both error metrics appear: GPTQ's output error and the calibration-free runs' weight error.
    assert.deepEqual(new Set(results.runs.map((r) => r.layerMetric)), new Set(['output', 'weight']));
    const bits = charts.get('bits')!;
    assert.equal(bits.points.length, marks);
    assert.equal(bits.pathLengths.length, results.runs.length);
    // Uniform grids: every run's points sit on one horizontal line, higher for more bits/weight.
    let k = 0;
    const rowY = results.runs.map((r) => {
      const ys = r.layers.map(() => bits.points[k++]!.y);
      assert.ok(Math.max(...ys) - Math.min(...ys) < 0.01, r.label);
      return ys[0]!;
    });
    for (let i = 0; i < rowY.length; i++) {
      for (let j = 0; j < rowY.length; j++) {
        if (results.runs[i]!.bitsPerWeight < results.runs[j]!.bitsPerWeight) assert.ok(rowY[i]! > rowY[j]!);
      }
    }
  });

  it('the full-page screenshot is the whole page and shows every method colour', async () => {
    const size = await page.evaluate(() => ({
      w: document.documentElement.scrollWidth,
      h: document.documentElement.scrollHeight,
    }));
    const legend = charts.get('pareto-kld')!.legend;
    const png = await pngColours(page, screenshot, legend);
    assert.equal(png.width, size.w);
    assert.equal(png.height, size.h);
    assert.ok(png.height > 1500, `${png.height} px: four charts and a table`);
    // Text anti-aliasing, the heat map's ramp and the method colours: far from one flat colour.
    assert.ok(png.distinct > 200, `${png.distinct} distinct colours`);
    // Each method's colour fills its legend swatch (100 px) and its points (≥ 4 × π·4.5² px).
    for (const c of legend) assert.ok(png.count[c]! > 200, `${c}: ${png.count[c]} px`);
    console.log(
      `  screenshot ${png.width} × ${png.height}, ${screenshot.length} bytes, ${png.distinct} colours; ` +
        legend.map((c) => `${c} ${png.count[c]} px`).join(', '),
    );
  });
});
