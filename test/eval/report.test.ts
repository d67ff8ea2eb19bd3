/**
 * `ptq compare` and its report: a small grid on the bundled TinyStories-656K model (rtn, hqq ×
 * int3/int4 g32, plus rtn NVFP4; 1024 evaluation tokens) checked against quantizeModel +
 * evaluate run directly, and the HTML checked for self-containment, chart contents and escaping.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { compareCommand, compareTable, protocolFor } from '../../src/cli/commands.js';
import { DEMO_MODEL, DEMO_TEXT } from '../../src/cli/demo.js';
import type { CompareResults } from '../../src/eval/compare.js';
import { weightRelativeError } from '../../src/eval/compare.js';
import { esc, paretoFrontier, renderReport } from '../../src/eval/report.js';
import { gridSpecFor } from '../../src/formats/number-formats.js';
import { Decoder } from '../../src/model/decoder.js';
import { loadModel } from '../../src/model/load.js';
import { evaluate } from '../../src/model/perplexity.js';
import { modelSize, quantizeModel } from '../../src/quant/quantize-model.js';
import { readmeBlock, textTableRows } from '../readme-figures.js';

const MAX_TOKENS = 1024;

describe('ptq compare', () => {
  let dir: string;
  let results: CompareResults;
  let html: string;
  const lines: string[] = [];

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ptq-compare-'));
    await compareCommand(
      DEMO_MODEL,
      {
        methods: ['rtn', 'hqq'],
        bits: [3, 4],
        formats: ['int', 'nvfp4'],
        groupSize: 32,
        text: DEMO_TEXT,
        maxTokens: MAX_TOKENS,
        output: path.join(dir, 'report'),
        nsamples: 8,
        seqlen: 128,
        seed: 0,
      },
      { json: false, log: (t) => lines.push(t) },
    );
    results = JSON.parse(await readFile(path.join(dir, 'report', 'results.json'), 'utf8'));
    html = await readFile(path.join(dir, 'report', 'report.html'), 'utf8');
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('runs the possible cells and says why the others are skipped', () => {
    assert.deepEqual(
      results.runs.map((r) => r.label),
      ['rtn int3-g32-sym', 'rtn int4-g32-sym', 'rtn nvfp4', 'hqq int3-g32-asym', 'hqq int4-g32-asym'],
    );
    assert.deepEqual(
      results.skipped.map((s) => `${s.method} ${s.format} ${s.bits}: ${s.reason}`),
      [
        'rtn nvfp4 3: nvfp4 has 4-bit codes',
        'hqq nvfp4 3: hqq optimizes integer grids only',
        'hqq nvfp4 4: hqq optimizes integer grids only',
      ],
    );
    assert.equal(results.tokens, MAX_TOKENS);
    // The terminal shows the same table as compareTable renders from results.json.
    assert.ok(lines.some((l) => l === compareTable(results)));
    assert.ok(lines.some((l) => l.includes('skipped hqq nvfp4 4-bit: hqq optimizes integer grids only')));
  });

  it('records exactly what quantizeModel + evaluate give for one run', async () => {
    const model = await loadModel(DEMO_MODEL);
    const tokens = model.tokenizer.encode(await readFile(DEMO_TEXT, 'utf8')).slice(0, MAX_TOKENS);
    const protocol = protocolFor(model, {});
    const grid = gridSpecFor('int', { bits: 4, groupSize: 32 });
    const q = await quantizeModel(model.config, model.weights, { method: 'rtn', grid });
    const reference = new Decoder(model.config, model.weights);
    const direct = await evaluate(new Decoder(model.config, q.weights), tokens, { protocol, reference });
    const size = modelSize(q.weights, q.quantization.tensors);
    const run = results.runs.find((r) => r.label === 'rtn int4-g32-sym')!;
    assert.equal(run.perplexity, direct.perplexity);
    assert.equal(run.kld, direct.kld);
    assert.equal(run.top1Agreement, direct.top1Agreement);
    assert.equal(run.bitsPerWeight, size.bitsPerWeight);
    assert.equal(run.bytes, size.totalBytes);
    // Calibration-free: the weight-space error of every quantized layer, recomputed here.
    assert.equal(run.layerMetric, 'weight');
    assert.equal(run.layers.length, 14); // 2 blocks × q,k,v,o,gate,up,down
    for (const l of run.layers) {
      assert.equal(
        l.relativeError,
        weightRelativeError(model.weights.get(l.name)!.data, q.weights.get(l.name)!.data),
      );
      // int4, one f16 scale per 32 weights, symmetric zero implicit: 4 + 16/32 bits.
      assert.equal(l.bitsPerWeight, 4.5);
    }
    assert.equal(results.reference.perplexity, direct.referencePerplexity);
  });

  it("prints README's example: protocol line, every row's bits/w, size, perplexity, KLD, top-1, the skips", () => {
    const printed = lines.join('\n').split('\n');
    const readme = readmeBlock('test/eval/report.test.ts runs this grid');
    const protocolLine = (ls: string[]) => ls.find((l) => l.startsWith('ptq compare: '));
    assert.equal(protocolLine(printed), protocolLine(readme));
    // The table: from its header to the first line that is not a row (blank, or the skips); the
    // timing columns (quantize s, eval tok/s) measure the machine and are not compared.
    const table = (ls: string[]) => {
      const start = ls.findIndex((l) => l.startsWith('model '));
      const end = ls.findIndex((l, i) => i > start && (l.trim() === '' || l.startsWith('skipped ')));
      return textTableRows(ls.slice(start, end)).map((row) => row.slice(0, 6));
    };
    assert.equal(table(readme).length, 7, 'README: header, fp32 and five runs');
    assert.deepEqual(table(printed), table(readme));
    const skips = (ls: string[]) => ls.filter((l) => l.startsWith('skipped '));
    assert.equal(skips(readme).length, 3);
    assert.deepEqual(skips(printed), skips(readme));
  });

  it('3-bit KLD exceeds 4-bit KLD for each method; per-layer bits come from the stored tensors', () => {
    for (const method of ['rtn', 'hqq']) {
      const kld = (bits: number) =>
        results.runs.find((r) => r.method === method && r.grid.startsWith(`int${bits}`))!.kld;
      assert.ok(kld(3) > kld(4), `${method}: ${kld(3)} vs ${kld(4)}`);
    }
    // NVFP4: 4-bit E2M1 + an E4M3 scale per 16 = 4.5 bits, plus the FP32 tensor scale over its weights.
    const nv = results.runs.find((r) => r.format === 'nvfp4')!;
    for (const l of nv.layers)
      assert.ok(l.bitsPerWeight > 4.5 && l.bitsPerWeight < 4.51, `${l.name} ${l.bitsPerWeight}`);
    // HQQ: asymmetric with an f16 float zero per group: 3 + 32/32 bits.
    const hqq3 = results.runs.find((r) => r.label === 'hqq int3-g32-asym')!;
    for (const l of hqq3.layers) assert.equal(l.bitsPerWeight, 4);
  });

  it('Pareto frontier of a hand-made set (both coordinates minimized)', () => {
    const pts = [
      { x: 3, y: 10 }, // 0: on
      { x: 4, y: 8 }, // 1: on
      { x: 4, y: 9 }, // 2: dominated by 1
      { x: 5, y: 8 }, // 3: dominated by 1 (equal y, more bits)
      { x: 2, y: 20 }, // 4: on (fewest bits)
      { x: 6, y: 1 }, // 5: on (lowest loss)
      { x: 3, y: 10 }, // 6: duplicate of 0, on
      { x: Number.NaN, y: 0 }, // 7: not a point
      { x: 7, y: 1 }, // 8: dominated by 5
    ];
    assert.deepEqual(paretoFrontier(pts), [0, 1, 4, 5, 6]);
    assert.deepEqual(paretoFrontier([]), []);
  });

  it('the report is one self-contained file with one SVG per chart', () => {
    assert.doesNotMatch(html, /https?:\/\//);
    assert.doesNotMatch(html, /<script|<link|<img|<iframe|url\(|@import/i);
    const figures = Object.fromEntries(
      [...html.matchAll(/<figure id="([^"]+)">([\s\S]*?)<\/figure>/g)].map((m) => [m[1]!, m[2]!]),
    );
    assert.deepEqual(Object.keys(figures), ['pareto-ppl', 'pareto-kld', 'heatmap', 'bits']);
    const count = (s: string, re: RegExp) => s.match(re)?.length ?? 0;
    for (const [id, body] of Object.entries(figures)) assert.equal(count(body, /<svg /g), 1, id);
    // Pareto plots: one point per run; outlined points = the frontier computed from results.json.
    for (const [id, key] of [
      ['pareto-ppl', 'perplexity'],
      ['pareto-kld', 'kld'],
    ] as const) {
      assert.equal(count(figures[id]!, /<circle class="pt/g), results.runs.length, id);
      const frontier = paretoFrontier(results.runs.map((r) => ({ x: r.bitsPerWeight, y: r[key] })));
      assert.equal(count(figures[id]!, /class="pt pareto"/g), frontier.length, id);
    }
    // Here: hqq int4 (5.0 bits) has the lowest loss, rtn int3 (3.5) the fewest bits.
    const kldFrontier = paretoFrontier(results.runs.map((r) => ({ x: r.bitsPerWeight, y: r.kld })));
    assert.ok(kldFrontier.includes(0) && kldFrontier.includes(4));
    // Heat map: 14 layers × 5 runs cells; bits chart: one point per layer per run.
    assert.equal(count(figures.heatmap!, /<rect class="cell"/g), 14 * 5);
    assert.match(figures.heatmap!, /weight-space error ‖W − Ŵ‖²\/‖W‖²/);
    assert.equal(count(figures.bits!, /<circle class="pt"/g), 14 * 5);
    // The table: header, the fp row and one row per run.
    assert.equal(count(html, /<tr><th>/g), 2 + results.runs.length);
    assert.match(html, /hqq nvfp4 4-bit: hqq optimizes integer grids only/);
  });

  it('escapes every name taken from the data', () => {
    const evil = `<img src=x onerror="alert('x')">&amp`;
    const hostile: CompareResults = {
      ...results,
      model: `/tmp/${evil}`,
      runs: results.runs.map((r, i) => ({
        ...r,
        label: `${evil}${i}`,
        method: i % 2 ? evil : r.method,
        layers: r.layers.map((l) => ({ ...l, name: `${evil}.${l.name}` })),
      })),
    };
    const out = renderReport(hostile);
    assert.ok(!out.includes('<img'), 'raw tag in the report');
    assert.ok(!out.includes('"alert'), 'raw quote in the report');
    assert.ok(out.includes(esc(evil)));
    assert.equal(esc(evil), '&lt;img src=x onerror=&quot;alert(&#39;x&#39;)&quot;&gt;&amp;amp');
  });
});
