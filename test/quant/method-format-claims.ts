/**
 * The orderings README draws from its method × format tables ("What holds across columns"),
 * as checks over a table's cells. method-format-claims.test.ts runs them on the pinned cells
 * (the numbers README prints); method-format-table.ts runs them again at the end of every table
 * test on that run's measured cells (the other test file's rows from the pins), so a change that
 * moves a cell within its 1% pin but across an ordering fails too.
 *
 * Every claim is in KLD unless it says perplexity: the README sentence it checks is quoted.
 */

export interface Cell {
  perplexity: number;
  kld: number;
}

/** A table: its cells by row and column label (undefined where the cell cannot exist), FP32 perplexity. */
export interface Table {
  model: string;
  fp32: number;
  cell(row: string, col: string): Cell | undefined;
}

export interface Claim {
  /** The README wording checked. */
  readme: string;
  /** What fails, one line each; empty when the claim holds. */
  check(t: Table): string[];
}

const ROWS = [
  'rtn',
  'rtn + hadamard',
  'rtn + hadamard-online',
  'gptq',
  'gptq + hadamard-online',
  'awq',
  'hqq',
  'sinq',
];
const GPTQ_ROWS = ['gptq', 'gptq + hadamard-online'];

/** Each model's ~4-bit, ~3-bit and ternary/binary columns, and its symmetric/asymmetric pairs. */
const COLUMNS: Record<
  string,
  { fourBit: string[]; threeBit: string[]; lowEnd: string[]; symAsym: [string, string][] }
> = {
  'tinystories-656k': {
    fourBit: ['int4 g32', 'int4 g32 asym', 'int4 g128', 'nvfp4', 'mxfp4', 'fp4-e2m1 g32'],
    threeBit: ['int3 g32', 'int3 g64'],
    lowEnd: ['ternary g32', 'binary g32'],
    symAsym: [['int4 g32', 'int4 g32 asym']],
  },
  'stories260K.bin': {
    fourBit: ['int4 pc', 'int4 pc asym', 'fp4-e2m1 pc'],
    threeBit: ['int3 pc', 'int3 pc asym'],
    lowEnd: ['ternary pc'],
    symAsym: [
      ['int4 pc', 'int4 pc asym'],
      ['int3 pc', 'int3 pc asym'],
    ],
  },
};

const fmt = (c: Cell) => `${c.perplexity.toFixed(2)} / ${c.kld.toFixed(4)}`;

/** Each (row, cell) of a column that exists. */
function column(t: Table, col: string): [string, Cell][] {
  return ROWS.flatMap((row) => {
    const c = t.cell(row, col);
    return c ? [[row, c] as [string, Cell]] : [];
  });
}

/** The row with the lowest value of `metric` in a column. */
function best(t: Table, col: string, metric: keyof Cell): [string, Cell] {
  return column(t, col).reduce((a, b) => (b[1][metric] < a[1][metric] ? b : a));
}

export const CLAIMS: Claim[] = [
  {
    readme: 'GPTQ has a lower KLD than every other method at every ~4-bit grid',
    // Plain GPTQ beats every other method; the column's best is GPTQ, plain or with the online
    // rotation (which is lower at tinystories int4 g32 asym and g128 and stories260K int4 pc).
    check(t) {
      const fails: string[] = [];
      for (const col of COLUMNS[t.model]!.fourBit) {
        const gptq = t.cell('gptq', col)!;
        for (const [row, c] of column(t, col)) {
          if (!GPTQ_ROWS.includes(row) && !(gptq.kld < c.kld))
            fails.push(`${col}: gptq ${fmt(gptq)} not below ${row} ${fmt(c)}`);
        }
        const [row] = best(t, col, 'kld');
        if (!GPTQ_ROWS.includes(row)) fails.push(`${col}: lowest KLD is ${row}'s`);
      }
      return fails;
    },
  },
  {
    readme: 'asymmetric beats symmetric in KLD for every method',
    // And on stories260K, whose table has per-channel columns only, at int4 and int3 per channel.
    check(t) {
      const fails: string[] = [];
      for (const [sym, asym] of COLUMNS[t.model]!.symAsym) {
        for (const row of ROWS) {
          const s = t.cell(row, sym);
          const a = t.cell(row, asym);
          // HQQ is always asymmetric: its symmetric cell is the asymmetric one.
          if (s && a && !(a.kld < s.kld)) fails.push(`${row}: ${asym} ${fmt(a)} not below ${sym} ${fmt(s)}`);
        }
      }
      return fails;
    },
  },
  {
    readme: 'NVFP4 matches (within 0.5%) or beats int4 g32 in KLD at the same 4.5 bits, MXFP4 loses to both',
    // "Matches": within 1% (at most 0.4% above: rtn + hadamard, gptq). MXFP4 loses to both.
    check(t) {
      if (!t.cell('rtn', 'nvfp4')) return [];
      const fails: string[] = [];
      for (const row of ROWS) {
        const int4 = t.cell(row, 'int4 g32');
        const nvfp4 = t.cell(row, 'nvfp4');
        const mxfp4 = t.cell(row, 'mxfp4');
        if (!int4 || !nvfp4 || !mxfp4) continue;
        if (!(nvfp4.kld <= 1.01 * int4.kld))
          fails.push(`${row}: nvfp4 ${fmt(nvfp4)} vs int4 g32 ${fmt(int4)}`);
        if (!(mxfp4.kld > int4.kld && mxfp4.kld > nvfp4.kld))
          fails.push(`${row}: mxfp4 ${fmt(mxfp4)} vs int4 g32 ${fmt(int4)}, nvfp4 ${fmt(nvfp4)}`);
      }
      return fails;
    },
  },
  {
    readme:
      'at ~3 bits HQQ (tinystories int3 g32, at 4 bits/w with its zeros) and GPTQ/AWQ (stories260K) lead in both metrics and RTN falls apart',
    // Lead: the lowest KLD and the lowest perplexity of the column. Falls apart: RTN's KLD at
    // least 1.5× the column's best (1.7–2.1× measured).
    check(t) {
      const fails: string[] = [];
      const leaders =
        t.model === 'tinystories-656k'
          ? [{ col: 'int3 g32', rows: ['hqq'] }]
          : COLUMNS[t.model]!.threeBit.map((col) => ({ col, rows: [...GPTQ_ROWS, 'awq'] }));
      for (const { col, rows } of leaders) {
        for (const metric of ['kld', 'perplexity'] as const) {
          const [row, c] = best(t, col, metric);
          if (!rows.includes(row)) fails.push(`${col}: lowest ${metric} is ${row}'s ${fmt(c)}`);
        }
      }
      for (const col of COLUMNS[t.model]!.threeBit) {
        const rtn = t.cell('rtn', col)!;
        const [row, c] = best(t, col, 'kld');
        if (!(rtn.kld >= 1.5 * c.kld)) fails.push(`${col}: rtn ${fmt(rtn)} within 1.5× of ${row} ${fmt(c)}`);
      }
      return fails;
    },
  },
  {
    readme: 'the absorbed rotation loses in KLD everywhere',
    check(t) {
      const fails: string[] = [];
      const { fourBit, threeBit, lowEnd } = COLUMNS[t.model]!;
      for (const col of [...fourBit, ...threeBit, ...lowEnd]) {
        const plain = t.cell('rtn', col)!;
        const rotated = t.cell('rtn + hadamard', col)!;
        if (!(rotated.kld > plain.kld))
          fails.push(`${col}: rtn + hadamard ${fmt(rotated)} not above rtn ${fmt(plain)}`);
      }
      return fails;
    },
  },
  {
    readme: 'the online one helps RTN on int4 KLD (except stories260K asym; not on NVFP4/MXFP4)',
    check(t) {
      const fails: string[] = [];
      const helps = t.model === 'tinystories-656k' ? ['int4 g32', 'int4 g32 asym', 'int4 g128'] : ['int4 pc'];
      const doesNot = t.model === 'tinystories-656k' ? ['nvfp4', 'mxfp4'] : ['int4 pc asym'];
      for (const col of [...helps, ...doesNot]) {
        const plain = t.cell('rtn', col)!;
        const online = t.cell('rtn + hadamard-online', col)!;
        if (helps.includes(col) !== online.kld < plain.kld)
          fails.push(`${col}: rtn + hadamard-online ${fmt(online)} vs rtn ${fmt(plain)}`);
      }
      return fails;
    },
  },
  {
    readme: "ternary and binary need training (GPTQ cuts their perplexity 2.6–4.6×, still 13–25× FP32's)",
    // "2.6–4.6×" as README rounds it; "need training": GPTQ's perplexity still above 10× FP32's
    // (12.8×, 24.9× and 22.0×: stories260K's ternary GPTQ is at 84.8, not in the hundreds).
    check(t) {
      const fails: string[] = [];
      for (const col of COLUMNS[t.model]!.lowEnd) {
        const rtn = t.cell('rtn', col)!;
        const gptq = t.cell('gptq', col)!;
        const cut = rtn.perplexity / gptq.perplexity;
        if (!(cut >= 2.55 && cut < 4.65)) fails.push(`${col}: GPTQ cuts perplexity ${cut.toFixed(2)}×`);
        if (!(gptq.perplexity > 10 * t.fp32)) fails.push(`${col}: GPTQ ${fmt(gptq)} vs FP32 ${t.fp32}`);
      }
      return fails;
    },
  },
];

/** Every claim's failures, prefixed with the model and the README wording. */
export function checkClaims(t: Table): string[] {
  return CLAIMS.flatMap((c) => c.check(t).map((f) => `${t.model}: "${c.readme}": ${f}`));
}

/** A Table over `model | row | column` keyed cells (the pins' and the table test's keys). */
export function tableOf(model: string, fp32: number, cells: Map<string, Cell>): Table {
  return { model, fp32, cell: (row, col) => cells.get(`${model} | ${row} | ${col}`) };
}
