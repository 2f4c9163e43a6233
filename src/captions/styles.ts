/**
 * Caption styles: prompt templates kept as text in `templates/captions/<style>.md`, so a style is
 * changed or added without touching code. A template is an optional front matter block
 * (`---` / `description: …` / `---`) followed by the instructions sent to the model as its system
 * message. Placeholders: `{class}` (the class noun), `{kind}` (`person`, `object`, `style`) and
 * `{placeholder}` (what the model writes for the subject, see `subject.ts`). Each style carries
 * the SHA-256 of its file, which goes into the captioning cache key: editing a template re-captions.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BoothError, errorMessage } from '../errors.js';
import type { Subject } from '../sessions/manifest.js';
import { SUBJECT_PLACEHOLDER } from './subject.js';

/** The bundled templates folder (`templates/captions/`, two levels up from `src/captions/` and `dist/captions/`). */
export const STYLES_DIR = fileURLToPath(new URL('../../templates/captions/', import.meta.url));

/** The style used when none is asked for. */
export const DEFAULT_STYLE = 'natural';

/** A loaded caption style. */
export interface CaptionStyle {
  /** File name without `.md` (e.g. `natural`, `tags`). */
  name: string;
  /** One line from the front matter, for `--help` and listings. */
  description: string;
  /** The instructions, placeholders not yet filled. */
  template: string;
  /** SHA-256 of the whole file, hex. */
  sha256: string;
  /** Whether the style asks for comma-separated tags (the offline captioner follows suit). */
  tags: boolean;
}

/** Names of the bundled styles, sorted. */
export function listStyles(dir: string = STYLES_DIR): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.md'))
    .map((f) => f.slice(0, -3))
    .sort();
}

/**
 * Load a style by name (from `templates/captions/`) or from a path to a `.md` file.
 * @param nameOrPath - `natural`, `tags`, or `./my-style.md`
 * @returns the style
 * @throws BoothError `NOT_FOUND` naming the known styles; `INVALID_ARGUMENT` for a template without `{placeholder}`
 * @example const style = await loadStyle('tags');
 */
export async function loadStyle(nameOrPath: string = DEFAULT_STYLE, dir: string = STYLES_DIR): Promise<CaptionStyle> {
  const isPath = nameOrPath.endsWith('.md') || nameOrPath.includes('/') || nameOrPath.includes(path.sep);
  if (!isPath && !/^[a-z0-9][a-z0-9_-]{0,63}$/i.test(nameOrPath)) {
    throw new BoothError('INVALID_ARGUMENT', `caption style ${JSON.stringify(nameOrPath)} is not a style name; use one of: ${listStyles(dir).join(', ')} or a path to a .md file`);
  }
  const file = isPath ? nameOrPath : path.join(dir, `${nameOrPath}.md`);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new BoothError(
      'NOT_FOUND',
      `caption style ${JSON.stringify(nameOrPath)} not found (${file}: ${errorMessage(err)}); bundled styles: ${listStyles(dir).join(', ') || 'none'}`,
      { cause: err },
    );
  }
  const name = path.basename(file, '.md');
  let description = '';
  let body = text;
  const fm = /^---\r?\n([\s\S]*?)\r?\n---\r?\n/.exec(text);
  if (fm) {
    body = text.slice(fm[0].length);
    description = /^description:\s*(.+)$/m.exec(fm[1] ?? '')?.[1]?.trim() ?? '';
  }
  if (!body.includes('{placeholder}')) {
    throw new BoothError('INVALID_ARGUMENT', `caption style ${file} never mentions {placeholder}, so the model would not know how to refer to the subject; add it`);
  }
  return {
    name,
    description,
    template: body.trim(),
    sha256: createHash('sha256').update(text).digest('hex'),
    tags: /\btags?\b/i.test(name) || /\btags\b/i.test(description),
  };
}

/**
 * Fill a style's placeholders for one subject.
 * @returns the system instructions for the model
 */
export function renderStyle(style: CaptionStyle, subject: Pick<Subject, 'classNoun' | 'kind'>): string {
  return style.template.replaceAll('{class}', subject.classNoun).replaceAll('{kind}', subject.kind).replaceAll('{placeholder}', SUBJECT_PLACEHOLDER);
}
