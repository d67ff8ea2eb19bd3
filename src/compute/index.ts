export type { AttentionShape, ComputeEngine } from './engine.js';
export { JsEngine } from './js-engine.js';
export { OrtEngine } from './ort-engine.js';

import type { ComputeEngine } from './engine.js';
import { OrtEngine } from './ort-engine.js';

let defaultEngine: ComputeEngine | undefined;

/** The engine used when none is passed: onnxruntime, the fastest matrix engine on this CPU. */
export function getDefaultEngine(): ComputeEngine {
  defaultEngine ??= new OrtEngine();
  return defaultEngine;
}
