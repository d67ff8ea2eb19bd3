/**
 * The comparison report: results of `ptq compare` (compare.ts) rendered as ONE self-contained
 * HTML file — inline CSS and inline SVG charts, no scripts, fonts or network references — so it
 * opens anywhere offline. Pure: data in, string out.
 *
 * Charts are drawn with d3-scale / d3-shape / d3-array, which compute scales, ticks and path
 * strings without a DOM; the SVG elements around them are assembled here. Every piece of text
 * that comes from the data (method names, grid names, layer names, paths) goes through `esc`.
 */
import { extent, max, min } from 'd3-array';
import { type ScaleLinear, type ScaleLogarithmic, scaleLinear, scaleLog, scaleOrdinal } from 'd3-scale';
import { line } from 'd3-shape';
import type { CompareResults, CompareRun } from './compare.js';

/** Escape text for HTML/SVG element content and double- or single-quoted attributes. */
export function esc(s: string | number): string {
  return String(s).replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!,
  );
}

export interface Point {
  x: number;
  y: number;
}

/**
 * Indices of the Pareto-optimal points when both coordinates are minimized (fewer bits, lower
 * loss): a point is on the frontier when no other point is at most as large in both and
 * strictly smaller in one. Sorted by x (then y), one sweep keeping the running minimum of y.
 * Exact duplicates of a frontier point are all on it. Non-finite points never are.
 */
export function paretoFrontier(points: readonly Point[]): number[] {
  const order = points
    .map((_, i) => i)
    .filter((i) => Number.isFinite(points[i]!.x) && Number.isFinite(points[i]!.y))
    .sort((a, b) => points[a]!.x - points[b]!.x || points[a]!.y - points[b]!.y);
  const out: number[] = [];
  let best = Number.POSITIVE_INFINITY;
  let last: Point | undefined;
  for (const i of order) {
    const p = points[i]!;
    if (p.y < best) {
      out.push(i);
      best = p.y;
      last = p;
    } else if (last && p.x === last.x && p.y === last.y) {
      out.push(i);
    }
  }
  return out.sort((a, b) => a - b);
}

// Okabe–Ito palette: distinguishable under the common colour-vision deficiencies.
const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#D55E00', '#CC79A7', '#56B4E9', '#F0E442', '#000000'];
const W = 640;
const H = 360;
const M = { top: 20, right: 130, bottom: 44, left: 64 };

const num = (x: number) => (Number.isInteger(x) ? String(x) : x.toPrecision(4));

/** One colour per method, in order of first appearance, shared by the charts. */
function methodColors(runs: readonly CompareRun[]) {
  const methods = [...new Set(runs.map((r) => r.method))];
  return { methods, color: scaleOrdinal<string, string>().domain(methods).range(PALETTE) };
}

/** Scatter of one metric against bits/weight, one series per method, the frontier as a step line. */
export function paretoSvg(runs: readonly CompareRun[], metric: 'perplexity' | 'kld', title: string): string {
  const { methods, color } = methodColors(runs);
  const pts = runs.map((r) => ({ x: r.bitsPerWeight, y: r[metric] }));
  // A log axis needs positive values: a zero KLD (identical model) is drawn at the axis floor.
  const positive = pts.map((p) => p.y).filter((y) => y > 0);
  const [y0, y1] = [min(positive) ?? 1e-6, max(positive) ?? 1];
  const [x0, x1] = extent(pts, (p) => p.x) as [number, number];
  const x = scaleLinear()
    .domain([Math.floor(x0 ?? 0) - 0.25, Math.ceil(x1 ?? 8) + 0.25])
    .range([M.left, W - M.right]);
  const y = scaleLog()
    .domain([y0 / 1.15, y1 * 1.15])
    .range([H - M.bottom, M.top]);
  const yOf = (v: number) => y(Math.max(v, y.domain()[0]!));
  const frontier = paretoFrontier(pts);
  const fpts = frontier.map((i) => pts[i]!).sort((a, b) => a.x - b.x);
  // Step line: each frontier point holds its loss until the next, cheaper-in-loss point.
  const steps: [number, number][] = [];
  fpts.forEach((p, k) => {
    if (k > 0) steps.push([x(p.x), yOf(fpts[k - 1]!.y)]);
    steps.push([x(p.x), yOf(p.y)]);
  });
  const path = line()(steps) ?? '';
  const parts: string[] = [];
  parts.push(axes(ticksOf(x, 8), ticksOf(y, 6), 'bits per weight', title));
  parts.push(`<path class="frontier" d="${esc(path)}" fill="none" stroke="#444" stroke-dasharray="4 3"/>`);
  runs.forEach((r, i) => {
    const on = frontier.includes(i);
    parts.push(
      `<circle class="pt${on ? ' pareto' : ''}" cx="${x(r.bitsPerWeight).toFixed(2)}" cy="${yOf(r[metric]).toFixed(2)}" r="${on ? 6 : 4.5}" ` +
        `fill="${color(r.method)}" stroke="${on ? '#000' : 'none'}" stroke-width="1.5"><title>${esc(r.label)}: ${esc(metric)} ${esc(num(r[metric]))}, ` +
        `${esc(r.bitsPerWeight.toFixed(3))} bits/w${on ? ' (Pareto)' : ''}</title></circle>`,
    );
  });
  parts.push(
    legend(
      methods.map((m) => [m, color(m)]),
      W - M.right + 12,
      M.top,
    ),
  );
  return svg(`${title} vs bits per weight`, parts.join('\n'));
}

/** Layers × runs grid coloured by log relative error. */
export function heatmapSvg(runs: readonly CompareRun[]): string {
  const layers = [...new Set(runs.flatMap((r) => r.layers.map((l) => l.name)))];
  const cell = { w: Math.max(28, Math.min(64, 560 / Math.max(1, runs.length))), h: 16 };
  const left = 10 + 7 * Math.max(5, ...layers.map((l) => l.length));
  // Column labels are rotated 50° up and to the right: room above and right of the grid for them.
  const labelLength = 7 * Math.max(...runs.map((r) => r.label.length + 4));
  const top = Math.ceil(20 + labelLength * Math.sin((Math.PI * 50) / 180));
  const width = Math.ceil(left + cell.w * runs.length + labelLength * Math.cos((Math.PI * 50) / 180));
  const height = top + cell.h * layers.length + 50;
  const errors = runs.flatMap((r) => r.layers.map((l) => l.relativeError)).filter((e) => e > 0);
  const lo = min(errors) ?? 1e-6;
  const hi = max(errors) ?? 1;
  const color = scaleLog<string>()
    .domain([lo, hi > lo ? hi : lo * 10])
    .range(['#fff5eb', '#7f2704'])
    .clamp(true);
  const parts: string[] = [];
  runs.forEach((r, j) => {
    const cx = left + cell.w * (j + 0.5);
    parts.push(
      `<text x="${cx}" y="${top - 6}" transform="rotate(-50 ${cx} ${top - 6})" font-size="11">${esc(r.label)}${r.layerMetric === 'weight' ? ' (w)' : ''}</text>`,
    );
  });
  layers.forEach((name, i) => {
    parts.push(
      `<text x="${left - 6}" y="${top + cell.h * (i + 0.7)}" text-anchor="end" font-size="11">${esc(name)}</text>`,
    );
  });
  runs.forEach((r, j) => {
    const byName = new Map(r.layers.map((l) => [l.name, l.relativeError]));
    layers.forEach((name, i) => {
      const e = byName.get(name);
      if (e === undefined) return;
      parts.push(
        `<rect class="cell" x="${left + cell.w * j}" y="${top + cell.h * i}" width="${cell.w - 1}" height="${cell.h - 1}" fill="${color(Math.max(e, lo))}">` +
          `<title>${esc(r.label)} · ${esc(name)}: ${esc(e.toExponential(3))} (${r.layerMetric === 'output' ? 'output' : 'weight'} error)</title></rect>`,
      );
    });
  });
  // Colour bar: the log scale's ticks at both ends.
  const barY = top + cell.h * layers.length + 16;
  for (let k = 0; k < 10; k++) {
    const v = lo * (hi / lo) ** (k / 9);
    parts.push(`<rect x="${left + k * 16}" y="${barY}" width="16" height="10" fill="${color(v)}"/>`);
  }
  parts.push(`<text x="${left}" y="${barY + 24}" font-size="11">${esc(lo.toExponential(1))}</text>`);
  parts.push(
    `<text x="${left + 160}" y="${barY + 24}" font-size="11" text-anchor="end">${esc(hi.toExponential(1))}</text>`,
  );
  return svg('per-layer relative error', parts.join('\n'), width, height);
}

/** Stored bits per weight of every quantized layer, one line per run (flat lines: uniform grids). */
export function bitsSvg(runs: readonly CompareRun[]): string {
  const layers = [...new Set(runs.flatMap((r) => r.layers.map((l) => l.name)))];
  const { methods, color } = methodColors(runs);
  const all = runs.flatMap((r) => r.layers.map((l) => l.bitsPerWeight));
  const x = scaleLinear()
    .domain([0, Math.max(1, layers.length - 1)])
    .range([M.left, W - M.right]);
  const y = scaleLinear()
    .domain([0, Math.ceil((max(all) ?? 8) + 0.5)])
    .range([H - M.bottom, M.top])
    .nice();
  const index = new Map(layers.map((l, i) => [l, i]));
  const step = Math.max(1, Math.ceil(layers.length / 12));
  const xTicks = layers.map((_, i) => [x(i), String(i)] as [number, string]).filter((_, i) => i % step === 0);
  const parts = [axes(xTicks, ticksOf(y, 6), 'quantized layer (index in model order)', 'bits per weight')];
  for (const r of runs) {
    const pts = r.layers.map((l) => [x(index.get(l.name)!), y(l.bitsPerWeight)] as [number, number]);
    parts.push(
      `<path d="${esc(line()(pts) ?? '')}" fill="none" stroke="${color(r.method)}" stroke-width="1.5"><title>${esc(r.label)}</title></path>`,
    );
    r.layers.forEach((l, i) => {
      parts.push(
        `<circle class="pt" cx="${pts[i]![0].toFixed(2)}" cy="${pts[i]![1].toFixed(2)}" r="3" fill="${color(r.method)}">` +
          `<title>${esc(r.label)} · ${esc(l.name)}: ${esc(l.bitsPerWeight.toFixed(3))} bits/w</title></circle>`,
      );
    });
  }
  parts.push(
    legend(
      methods.map((m) => [m, color(m)]),
      W - M.right + 12,
      M.top,
    ),
  );
  return svg('bits per weight of each layer', parts.join('\n'));
}

/** Tick positions and labels from the scale (a log scale labels a few ticks per decade, the rest stay gridlines). */
function ticksOf(
  scale: ScaleLinear<number, number> | ScaleLogarithmic<number, number>,
  count: number,
): [number, string][] {
  const ticks = scale.ticks(count);
  // Within one decade d3's log ticks are linear ones and its log format would hide most: label all.
  // Over several decades d3 labels a few per decade; '~g' writes them as plain numbers (0.02,
  // 0.0002) instead of d3's default SI prefixes (20m, 200µ), which read as units on a KLD axis.
  const format =
    ticks.length <= 10 ? (t: number) => String(Number(t.toPrecision(6))) : scale.tickFormat(count, '~g');
  return ticks.map((t) => [Number(scale(t).toFixed(2)), format(t)]);
}

function axes(
  xTicks: [number, string][],
  yTicks: [number, string][],
  xLabel: string,
  yLabel: string,
): string {
  const bottom = H - M.bottom;
  const out = [
    `<line x1="${M.left}" y1="${bottom}" x2="${W - M.right}" y2="${bottom}" stroke="#333"/>`,
    `<line x1="${M.left}" y1="${M.top}" x2="${M.left}" y2="${bottom}" stroke="#333"/>`,
  ];
  for (const [px, t] of xTicks) {
    out.push(
      `<line x1="${px}" y1="${bottom}" x2="${px}" y2="${bottom + 5}" stroke="#333"/><text x="${px}" y="${bottom + 18}" text-anchor="middle" font-size="11">${esc(t)}</text>`,
    );
  }
  for (const [py, t] of yTicks) {
    out.push(
      `<line x1="${M.left - 5}" y1="${py}" x2="${W - M.right}" y2="${py}" stroke="#ddd"/><text x="${M.left - 8}" y="${py + 4}" text-anchor="end" font-size="11">${esc(t)}</text>`,
    );
  }
  out.push(
    `<text x="${(M.left + W - M.right) / 2}" y="${H - 6}" text-anchor="middle" font-size="12">${esc(xLabel)}</text>`,
  );
  out.push(
    `<text x="14" y="${(M.top + bottom) / 2}" transform="rotate(-90 14 ${(M.top + bottom) / 2})" text-anchor="middle" font-size="12">${esc(yLabel)}</text>`,
  );
  return out.join('\n');
}

function legend(entries: [string, string][], x0: number, y0: number): string {
  return entries
    .map(
      ([label, c], i) =>
        `<rect x="${x0}" y="${y0 + i * 18}" width="10" height="10" fill="${c}"/><text x="${x0 + 14}" y="${y0 + i * 18 + 9}" font-size="11">${esc(label)}</text>`,
    )
    .join('\n');
}

function svg(title: string, body: string, width = W, height = H): string {
  return (
    `<svg role="img" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">` +
    `<title>${esc(title)}</title>\n${body}\n</svg>`
  );
}

/** The whole report: one HTML document, nothing fetched. */
export function renderReport(results: CompareResults): string {
  const { runs } = results;
  const frontierPpl = new Set(paretoFrontier(runs.map((r) => ({ x: r.bitsPerWeight, y: r.perplexity }))));
  const frontierKld = new Set(paretoFrontier(runs.map((r) => ({ x: r.bitsPerWeight, y: r.kld }))));
  const ref = results.reference;
  const row = (cells: (string | number)[]) =>
    `<tr>${cells.map((c, i) => (i === 0 ? `<th>${esc(c)}</th>` : `<td>${esc(c)}</td>`)).join('')}</tr>`;
  const table = [
    `<table><thead><tr>${[
      'run',
      'bits/w',
      'bytes',
      'perplexity',
      'KLD',
      'top-1 agree',
      'quantize s',
      'eval tok/s',
      'peak RSS MiB',
      'Pareto (ppl / KLD)',
    ]
      .map((h) => `<th>${esc(h)}</th>`)
      .join('')}</tr></thead><tbody>`,
    row([
      'fp32 (reference)',
      ref.bitsPerWeight.toFixed(2),
      ref.bytes,
      ref.perplexity.toFixed(4),
      '-',
      '-',
      '-',
      ref.evaluation.tokensPerSecond.toFixed(0),
      '-',
      '-',
    ]),
    ...runs.map((r, i) =>
      row([
        r.label,
        r.bitsPerWeight.toFixed(3),
        r.bytes,
        r.perplexity.toFixed(4),
        r.kld.toFixed(5),
        `${(100 * r.top1Agreement).toFixed(2)}%`,
        r.quantizeSeconds.toFixed(2),
        r.evalTokensPerSecond.toFixed(0),
        r.peakRssMiB.toFixed(0),
        `${frontierPpl.has(i) ? 'yes' : 'no'} / ${frontierKld.has(i) ? 'yes' : 'no'}`,
      ]),
    ),
    '</tbody></table>',
  ].join('\n');
  const metrics = [...new Set(runs.map((r) => r.layerMetric))];
  const caption =
    'Relative error of each quantized layer (darker = larger, log colour scale). ' +
    (metrics.includes('output')
      ? 'Calibrated runs: output error ‖WX − ŴX‖²/‖WX‖² on the calibration inputs. '
      : '') +
    (metrics.includes('weight')
      ? 'Runs marked (w) are calibration-free: weight-space error ‖W − Ŵ‖²/‖W‖². '
      : '') +
    'The two metrics are not directly comparable.';
  const skipped = results.skipped.length
    ? `<h2>Skipped combinations</h2><ul>${results.skipped.map((s) => `<li>${esc(`${s.method} ${s.format} ${s.bits}-bit: ${s.reason}`)}</li>`).join('')}</ul>`
    : '';
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ptq compare: ${esc(results.model)}</title>
<style>
body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
tbody th{text-align:left;font-weight:normal}figure{margin:1.5em 0}figcaption{font-size:13px;color:#555;max-width:720px}
</style></head><body>
<h1>Quantization comparison</h1>
<p>Model <code>${esc(results.model)}</code>, evaluated on <code>${esc(results.text)}</code>: ${esc(results.tokens)} tokens, ${esc(results.protocol)}.
Full-precision perplexity ${esc(ref.perplexity.toFixed(4))}. KLD is KL(P<sub>fp</sub> ‖ P<sub>quantized</sub>) in nats per token.</p>
<figure id="pareto-ppl">${paretoSvg(runs, 'perplexity', 'perplexity')}<figcaption>Perplexity vs stored bits per weight of the quantized layers (log y), one colour per method; outlined points and the dashed step line are the Pareto frontier (no other run has fewer bits and lower perplexity).</figcaption></figure>
<figure id="pareto-kld">${paretoSvg(runs, 'kld', 'KLD (nats)')}<figcaption>KLD to the full-precision model vs bits per weight (log y); Pareto frontier outlined.</figcaption></figure>
<figure id="heatmap">${heatmapSvg(runs)}<figcaption>${esc(caption)}</figcaption></figure>
<figure id="bits">${bitsSvg(runs)}<figcaption>Stored bits per weight of each quantized layer (codes, scales, zero points), read from the quantized tensors: flat lines are uniform grids, steps are mixed precision.</figcaption></figure>
<h2>Results</h2>
${table}
${skipped}
</body></html>
`;
}
