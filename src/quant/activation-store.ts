/**
 * The calibration activations of sequential calibration (calibrate.ts; GPTQ, Frantar et al.
 * arXiv:2210.17323 §4 "Step 3"), chunk by chunk: each chunk of windows keeps its residual stream
 * and, between the passes of one block, the input of its current stage. They are held in
 * float32 or in 16 bits (fp16, bf16: half the bytes) and, past a memory budget, in a temporary
 * file: the first `residentSlots` chunks stay in memory, the others are written to and read back
 * from the file at fixed offsets. Where a chunk lives changes no value: a chunk is rounded to the
 * store's precision whenever it is saved, in memory or not, so the calibration's numbers depend
 * on the precision alone and never on the budget (test/quant/streamed-calibration.test.ts).
 *
 * The spill file is unlinked as soon as it is opened (POSIX keeps it readable through the
 * handle): it disappears when the store is closed or the process ends, even by kill -9, and
 * never outlives the run. `stats` counts what was resident and what was written to the file, so
 * that tests assert that spilling really happened.
 */
import { randomBytes } from 'node:crypto';
import { type FileHandle, open, unlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { FileError, NumericError, UsageError } from '../errors.js';
import { f16DecodeTable } from '../formats/half.js';

/** Precision of the stored calibration activations. */
export type ActivationDtype = 'f32' | 'f16' | 'bf16';
export const ACTIVATION_DTYPES: readonly ActivationDtype[] = ['f32', 'f16', 'bf16'];

/** The default precision (see the measurements in stream-calibrate.ts). */
export const DEFAULT_ACTIVATION_DTYPE: ActivationDtype = 'f32';

export function checkActivationDtype(dtype: string, field = 'calib-dtype'): ActivationDtype {
  if (!(ACTIVATION_DTYPES as readonly string[]).includes(dtype))
    throw new UsageError('unknown calibration activation precision', {
      field,
      expected: ACTIVATION_DTYPES.join(', '),
      got: dtype,
    });
  return dtype as ActivationDtype;
}

export const dtypeBytes = (dtype: ActivationDtype): number => (dtype === 'f32' ? 4 : 2);

export interface ActivationStats {
  /** Bytes of the chunks held in memory now. */
  residentBytes: number;
  /** Bytes written to the spill file over the run (every save of a spilled chunk). */
  spilledBytes: number;
  /** Size of the spill file (0 when nothing spilled). */
  spillFileBytes: number;
}

export interface StoreOptions {
  dtype: ActivationDtype;
  /** Bytes of chunks kept in memory; the others go to the spill file. */
  budgetBytes: number;
  /** Directory of the spill file (the output's temporary directory), default os.tmpdir(). */
  spillDir?: string;
}

export class ActivationStore {
  readonly residentSlots: number;
  readonly stats: ActivationStats = { residentBytes: 0, spilledBytes: 0, spillFileBytes: 0 };
  private readonly memory: (Uint8Array | undefined)[];
  /** Floats saved in each slot. */
  private readonly lengths: number[];
  private readonly slotBytes: number;
  private file?: FileHandle;
  private io?: Uint8Array;

  constructor(
    readonly slots: number,
    /** Most floats one slot holds. */
    readonly slotFloats: number,
    private readonly options: StoreOptions,
  ) {
    this.slotBytes = slotFloats * dtypeBytes(options.dtype);
    this.residentSlots = Math.min(slots, Math.floor(Math.max(0, options.budgetBytes) / this.slotBytes));
    this.memory = new Array(slots).fill(undefined);
    this.lengths = new Array(slots).fill(0);
  }

  get dtype(): ActivationDtype {
    return this.options.dtype;
  }

  /** Store the concatenation of `parts` in slot `slot` (rounded to the store's precision). */
  async save(slot: number, parts: readonly Float32Array[], what: string): Promise<void> {
    const floats = parts.reduce((n, p) => n + p.length, 0);
    if (floats > this.slotFloats)
      throw new RangeError(`internal: ${floats} floats for a slot of ${this.slotFloats}`);
    const bytes = floats * dtypeBytes(this.options.dtype);
    const resident = slot < this.residentSlots;
    if (!resident && this.options.dtype === 'f32') {
      // float32 is stored as it is: each part's own bytes go to the file, through no slot-sized
      // buffer (126 MB per 4096-token chunk at TinyLlama's shape).
      let at = 0;
      for (const p of parts)
        at += await this.writeSpill(slot, at, new Uint8Array(p.buffer, p.byteOffset, p.byteLength));
      this.lengths[slot] = floats;
      return;
    }
    let buf: Uint8Array;
    if (resident) {
      buf = this.memory[slot] ?? new Uint8Array(this.slotBytes);
      if (!this.memory[slot]) this.stats.residentBytes += this.slotBytes;
      this.memory[slot] = buf;
    } else {
      this.io ??= new Uint8Array(this.slotBytes);
      buf = this.io;
    }
    let at = 0;
    for (const p of parts) at += encode(p, buf, at, this.options.dtype, what);
    this.lengths[slot] = floats;
    if (!resident) await this.writeSpill(slot, 0, buf.subarray(0, bytes));
  }

  /** Read slot `slot` into `parts` (their lengths sum to at most what was saved), as float32. */
  async load(slot: number, parts: readonly Float32Array[]): Promise<void> {
    const floats = parts.reduce((n, p) => n + p.length, 0);
    if (floats > this.lengths[slot]!)
      throw new RangeError(`internal: ${floats} floats read from a slot holding ${this.lengths[slot]}`);
    const bytes = floats * dtypeBytes(this.options.dtype);
    const resident = slot < this.residentSlots;
    if (!resident && this.options.dtype === 'f32') {
      let at = 0;
      for (const p of parts)
        at += await this.readSpill(slot, at, new Uint8Array(p.buffer, p.byteOffset, p.byteLength));
      return;
    }
    let buf: Uint8Array;
    if (resident) buf = this.memory[slot]!;
    else {
      this.io ??= new Uint8Array(this.slotBytes);
      buf = this.io;
      await this.readSpill(slot, 0, buf.subarray(0, bytes));
    }
    let at = 0;
    for (const p of parts) at += decode(buf, at, p, this.options.dtype);
  }

  /** Write `data` at byte `offset` of spilled slot `slot`; returns its length. */
  private async writeSpill(slot: number, offset: number, data: Uint8Array): Promise<number> {
    const file = await this.spillFile();
    const position = (slot - this.residentSlots) * this.slotBytes + offset;
    try {
      let done = 0;
      while (done < data.length)
        done += (await file.write(data, done, data.length - done, position + done)).bytesWritten;
    } catch (e) {
      throw new FileError(`writing calibration activations failed: ${(e as Error).message}`, {
        file: this.options.spillDir ?? os.tmpdir(),
        hint: 'free disk space there, or raise --max-memory',
      });
    }
    this.stats.spilledBytes += data.length;
    this.stats.spillFileBytes = Math.max(this.stats.spillFileBytes, position + data.length);
    return data.length;
  }

  /** Fill `data` from byte `offset` of spilled slot `slot`; returns its length. */
  private async readSpill(slot: number, offset: number, data: Uint8Array): Promise<number> {
    const position = (slot - this.residentSlots) * this.slotBytes + offset;
    let done = 0;
    while (done < data.length) {
      const { bytesRead } = await this.file!.read(data, done, data.length - done, position + done);
      if (bytesRead === 0) throw new FileError('calibration activations file truncated');
      done += bytesRead;
    }
    return data.length;
  }

  /** Drop the spill I/O buffer (one slot's bytes) until the next load or save needs it again. */
  releaseBuffer(): void {
    this.io = undefined;
  }

  /** Free the memory and the spill file. */
  async close(): Promise<void> {
    this.memory.fill(undefined);
    this.stats.residentBytes = 0;
    this.io = undefined;
    await this.file?.close().catch(() => {});
    this.file = undefined;
  }

  private async spillFile(): Promise<FileHandle> {
    if (this.file) return this.file;
    const dir = this.options.spillDir ?? os.tmpdir();
    const file = path.join(dir, `.ptq-activations-${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
    try {
      this.file = await open(file, 'wx+', 0o600);
      // Unlinked at once: the data lives as long as the handle, never longer than the process.
      await unlink(file);
    } catch (e) {
      await this.file?.close().catch(() => {});
      this.file = undefined;
      throw new FileError(`cannot create the calibration activations file: ${(e as Error).message}`, {
        file,
      });
    }
    return this.file;
  }
}

// Encoders and decoders work on the float32 bit patterns (a Uint32Array view): no per-element
// function call, and round to nearest even as formats/half.ts f32ToF16 / f32ToBf16 do.

/** Encode `src` at byte offset `at` of `dst`; returns the bytes written. */
function encode(
  src: Float32Array,
  dst: Uint8Array,
  at: number,
  dtype: ActivationDtype,
  what: string,
): number {
  if (dtype === 'f32') {
    dst.set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength), at);
    return src.byteLength;
  }
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(dst.buffer, dst.byteOffset + at, src.length);
  const bad = dtype === 'f16' ? encodeF16Bits(bits, out) : encodeBf16Bits(bits, out);
  if (bad >= 0) {
    throw new NumericError(`calibration activations overflow ${dtype === 'f16' ? 'float16' : 'bfloat16'}`, {
      field: what,
      got: `${src[bad]} at element ${bad}`,
      hint: dtype === 'f16' ? 'pass --calib-dtype bf16 (float32 range) or f32' : 'pass --calib-dtype f32',
    });
  }
  return src.length * 2;
}

/** float32 bits → fp16 bits; returns the index of the first finite value that overflows, or -1. */
function encodeF16Bits(bits: Uint32Array, out: Uint16Array): number {
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i]!;
    const sign = (b >>> 16) & 0x8000;
    const exp = (b >>> 23) & 0xff;
    const mant = b & 0x7fffff;
    const e = exp - 112; // exp - 127 + 15
    let h: number;
    if (exp === 0xff) h = sign | 0x7c00 | (mant ? 0x200 : 0);
    else if (e >= 0x1f) return i;
    else if (e <= 0) {
      if (e < -10) h = sign;
      else {
        const m = mant | 0x800000;
        const shift = 14 - e;
        const half = m >>> shift;
        const rest = m & ((1 << shift) - 1);
        const halfway = 1 << (shift - 1);
        h = sign | (half + (rest > halfway || (rest === halfway && half & 1) ? 1 : 0));
      }
    } else {
      const half = (e << 10) | (mant >>> 13);
      const rest = mant & 0x1fff;
      h = sign | (half + (rest > 0x1000 || (rest === 0x1000 && half & 1) ? 1 : 0));
      // Rounded up to Inf.
      if ((h & 0x7c00) === 0x7c00) return i;
    }
    out[i] = h;
  }
  return -1;
}

/** float32 bits → bf16 bits (same range as float32: only a value rounding up to Inf overflows). */
function encodeBf16Bits(bits: Uint32Array, out: Uint16Array): number {
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i]!;
    if ((b & 0x7f800000) === 0x7f800000) {
      out[i] = b & 0x7fffff ? ((b >>> 16) | 0x40) & 0xffff : b >>> 16;
      continue;
    }
    const h = ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
    if ((h & 0x7f80) === 0x7f80) return i;
    out[i] = h;
  }
  return -1;
}

/** Decode floats from byte offset `at` of `src` into `dst`; returns the bytes read. */
function decode(src: Uint8Array, at: number, dst: Float32Array, dtype: ActivationDtype): number {
  if (dtype === 'f32') {
    new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength).set(src.subarray(at, at + dst.byteLength));
    return dst.byteLength;
  }
  const half = new Uint16Array(src.buffer, src.byteOffset + at, dst.length);
  if (dtype === 'f16') {
    const table = f16DecodeTable();
    for (let i = 0; i < dst.length; i++) dst[i] = table[half[i]!]!;
  } else {
    const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
    for (let i = 0; i < dst.length; i++) bits[i] = half[i]! << 16;
  }
  return dst.length * 2;
}
