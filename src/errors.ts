/**
 * Typed errors. Every error a user can cause carries enough context (file, tensor,
 * offset, what was expected, what was found) to act on it without a stack trace.
 * The CLI prints `message` on one line and exits non-zero; `--debug` adds the stack.
 */

export interface ErrorContext {
  /** File the problem was found in, if any. */
  file?: string;
  /** Tensor name, config key or CLI option concerned. */
  field?: string;
  /** Byte offset in `file`, for binary formats. */
  offset?: number;
  expected?: string;
  got?: string;
  /** How to fix it, when known. */
  hint?: string;
}

export class PtqError extends Error {
  readonly context: ErrorContext;
  constructor(message: string, context: ErrorContext = {}) {
    super(PtqError.compose(message, context));
    this.name = new.target.name;
    this.context = context;
  }

  private static compose(message: string, c: ErrorContext): string {
    const where = [c.file, c.field && `'${c.field}'`, c.offset !== undefined && `offset ${c.offset}`]
      .filter(Boolean)
      .join(' ');
    let text = where ? `${where}: ${message}` : message;
    if (c.expected !== undefined) text += `; expected ${c.expected}`;
    if (c.got !== undefined) text += `, got ${c.got}`;
    if (c.hint) text += ` (${c.hint})`;
    return text;
  }
}

/** A file's bytes do not follow its format (truncated, bad header, bad offsets, bad dtype). */
export class FormatError extends PtqError {}
/** A tensor's shape disagrees with what the configuration or an operation requires. */
export class ShapeError extends PtqError {}
/** A model configuration is missing, unsupported or inconsistent. */
export class ConfigError extends PtqError {}
/** A command-line option or API argument is out of range or inconsistent. */
export class UsageError extends PtqError {}
/** Reading or writing a file failed (missing, unreadable, unwritable). */
export class FileError extends PtqError {}
/**
 * Values no method can work with: NaN or infinite weights, parameters that overflow their
 * storage dtype, a Hessian that stays singular after every dampening step.
 */
export class NumericError extends PtqError {}
