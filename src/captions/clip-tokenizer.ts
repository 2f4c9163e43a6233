/**
 * CLIP's byte-level BPE tokenizer, built from a Diffusers model's own `tokenizer/vocab.json` and
 * `tokenizer/merges.txt`, so Booth can tell whether a caption fits the text encoder's 77-token
 * window (BOS + 75 tokens + EOS) before training silently truncates it. The algorithm is the one
 * of OpenAI CLIP's `simple_tokenizer.py` and Hugging Face's `CLIPTokenizer`: lower-case, split
 * with CLIP's pattern (contractions, letter runs, single digits, punctuation runs), map each
 * piece's UTF-8 bytes to GPT-2's printable "byte unicode" alphabet, mark the piece's last symbol
 * with `</w>`, then repeatedly merge the adjacent pair with the lowest rank in `merges.txt`.
 * Not replicated: `ftfy` mojibake repair and HTML unescaping, which only matter for scraped web
 * text, not for captions a model or a person writes. Without the files, {@link estimateClipTokens}
 * gives a clearly labelled estimate instead.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { BoothError, errorMessage } from '../errors.js';

/** The CLIP text encoders' context: BOS + 75 caption tokens + EOS (SD 1.x, SD 2.x and both SDXL encoders). */
export const CLIP_MAX_TOKENS = 77;

const BOS = '<|startoftext|>';
const EOS = '<|endoftext|>';

/**
 * CLIP's pre-tokenizer: special tokens, English contractions, runs of letters, single digits and
 * runs of other non-space characters. Applied to lower-cased text, so no case-insensitive flag.
 */
const PIECE = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+/gu;

/**
 * GPT-2's reversible byte → printable character table: bytes that are already printable Latin-1
 * keep their own code point, the other 68 are moved to U+0100 onwards in byte order, so BPE never
 * has to handle whitespace or control characters.
 */
function byteAlphabet(): string[] {
  const table: string[] = new Array<string>(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return table;
}

const BYTE_CHARS = byteAlphabet();

/** Text normalisation shared by the tokenizer and the estimate: NFC, whitespace collapsed, lower case. */
function clean(text: string): string {
  return text.normalize('NFC').replace(/\s+/g, ' ').trim().toLowerCase();
}

/** A loaded CLIP tokenizer. */
export interface ClipTokenizer {
  /** Folder the vocabulary was read from. */
  readonly source: string;
  /**
   * Token ids of `text`, without BOS/EOS.
   * @example tokenizer.encode('a photo of a cat') // [320, 1125, 539, 320, 2368]
   */
  encode(text: string): number[];
  /** Tokens `text` takes in the encoder's window, BOS and EOS included (compare with {@link CLIP_MAX_TOKENS}). */
  count(text: string): number;
}

/**
 * Build a tokenizer from vocabulary and merges already in memory.
 * @param vocab - `vocab.json` parsed: token string → id (CLIP: 49,408 entries)
 * @param merges - `merges.txt` as text: a `#version` line, then one `left right` pair per line, best first
 * @param source - where they came from, for messages
 * @throws BoothError `INVALID_ARGUMENT` when the vocabulary lacks CLIP's special tokens or a merge line is malformed
 */
export function createClipTokenizer(vocab: Record<string, number>, merges: string, source = '(memory)'): ClipTokenizer {
  const bosId = vocab[BOS];
  const eosId = vocab[EOS];
  if (bosId === undefined || eosId === undefined) {
    throw new BoothError('INVALID_ARGUMENT', `${source}: vocab.json has no ${BOS} / ${EOS}; it is not a CLIP tokenizer vocabulary`);
  }
  const bos: number = bosId;
  const eos: number = eosId;
  const ranks = new Map<string, number>();
  const lines = merges.split('\n');
  let rank = 0;
  for (const [i, raw] of lines.entries()) {
    const line = raw.trimEnd();
    if (line === '' || (i === 0 && line.startsWith('#version'))) continue;
    const parts = line.split(' ');
    if (parts.length !== 2) throw new BoothError('INVALID_ARGUMENT', `${source}: merges.txt line ${i + 1} is not "left right": ${JSON.stringify(line.slice(0, 40))}`);
    // A pair listed twice keeps its first (best) rank.
    if (!ranks.has(line)) ranks.set(line, rank);
    rank++;
  }
  const cache = new Map<string, number[]>();

  /** BPE of one pre-tokenized piece, as ids. */
  function bpe(piece: string): number[] {
    const hit = cache.get(piece);
    if (hit) return hit;
    const chars = [...Buffer.from(piece, 'utf8')].map((b) => BYTE_CHARS[b] as string);
    let word = chars.map((c, i) => (i === chars.length - 1 ? `${c}</w>` : c));
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = i;
        }
      }
      if (best < 0) break;
      const left = word[best] as string;
      const right = word[best + 1] as string;
      // Merge every non-overlapping occurrence of the best pair, left to right.
      const next: string[] = [];
      for (let i = 0; i < word.length; ) {
        if (i < word.length - 1 && word[i] === left && word[i + 1] === right) {
          next.push(left + right);
          i += 2;
        } else {
          next.push(word[i] as string);
          i++;
        }
      }
      word = next;
    }
    // A symbol outside the vocabulary maps to the unknown token, which CLIP sets to EOS.
    const ids = word.map((sym) => vocab[sym] ?? eos);
    if (cache.size < 10_000) cache.set(piece, ids);
    return ids;
  }

  return {
    source,
    encode(text: string): number[] {
      const out: number[] = [];
      for (const m of clean(text).matchAll(PIECE)) {
        const piece = m[0];
        if (piece === BOS) out.push(bos);
        else if (piece === EOS) out.push(eos);
        else out.push(...bpe(piece));
      }
      return out;
    },
    count(text: string): number {
      return this.encode(text).length + 2;
    },
  };
}

/**
 * Load the tokenizer of a Diffusers model folder (`<dir>/tokenizer/vocab.json` + `merges.txt`) or
 * of a tokenizer folder itself (`<dir>/vocab.json` + `merges.txt`).
 * @param dir - a local Diffusers model folder or tokenizer folder
 * @returns the tokenizer
 * @throws BoothError `NOT_FOUND` when neither layout is there; `INVALID_ARGUMENT` when the files are not a CLIP tokenizer
 * @example
 * const tok = await loadClipTokenizer('../shared/models/clip-tokenizer');
 * tok.count('a photo of ohwx man'); // 7
 */
export async function loadClipTokenizer(dir: string): Promise<ClipTokenizer> {
  const candidates = [path.join(dir, 'tokenizer'), dir];
  const folder = candidates.find((d) => existsSync(path.join(d, 'vocab.json')) && existsSync(path.join(d, 'merges.txt')));
  if (!folder) {
    throw new BoothError(
      'NOT_FOUND',
      `no CLIP tokenizer in ${dir}: expected tokenizer/vocab.json and tokenizer/merges.txt (a Diffusers model folder) or vocab.json and merges.txt`,
    );
  }
  let vocab: unknown;
  let merges: string;
  try {
    vocab = JSON.parse(await readFile(path.join(folder, 'vocab.json'), 'utf8'));
    merges = await readFile(path.join(folder, 'merges.txt'), 'utf8');
  } catch (err) {
    throw new BoothError('INVALID_ARGUMENT', `cannot read the CLIP tokenizer in ${folder}: ${errorMessage(err)}`, { cause: err });
  }
  if (typeof vocab !== 'object' || vocab === null || Array.isArray(vocab)) {
    throw new BoothError('INVALID_ARGUMENT', `${path.join(folder, 'vocab.json')} is not a JSON object of token → id`);
  }
  return createClipTokenizer(vocab as Record<string, number>, merges, folder);
}

/**
 * Estimate CLIP tokens without the vocabulary, BOS and EOS included: every punctuation run and
 * digit is a token, and a word takes one token per started 6 letters. Calibrated against the real
 * tokenizer on the caption templates' kind of text (common English words are single tokens; rare
 * words, names and trigger phrases split): it over-counts a little more often than it under-counts.
 * Always reported as an estimate.
 * @param text - the caption
 * @returns estimated token count, BOS/EOS included
 */
export function estimateClipTokens(text: string): number {
  let n = 2;
  for (const m of clean(text).matchAll(PIECE)) {
    const piece = m[0];
    n += /^\p{L}+$/u.test(piece) ? Math.max(1, Math.ceil([...piece].length / 6)) : 1;
  }
  return n;
}

/** A caption's size in the text encoder's window. */
export interface TokenCount {
  /** Tokens, BOS/EOS included. */
  count: number;
  /** The window: {@link CLIP_MAX_TOKENS}, or T5's for FLUX.1 and SD 3.5. */
  limit: number;
  /** False when estimated without the model's tokenizer files. */
  exact: boolean;
  /** Which encoder's window: CLIP (SD bases) or T5 (FLUX.1, SD 3.5); absent means CLIP. */
  encoder?: 'clip' | 't5';
}

/** The caption window of a base model (`BaseModelInfo.captionWindow`). */
export interface CaptionWindow {
  encoder: 'clip' | 't5';
  tokens: number;
}

/**
 * Count a caption's tokens in the window that decides what the model reads: CLIP's 77 for the
 * SD bases (exact with `tokenizer`, else estimated), T5's 512 or 256 for FLUX.1 and SD 3.5
 * (estimated: T5's SentencePiece vocabulary of 32 000 pieces splits English about like CLIP's
 * BPE, so the CLIP count is used; CLIP there only adds a pooled vector or the first 77 tokens).
 * @returns the count, the limit and whether it is exact
 */
export function countCaptionTokens(text: string, tokenizer: ClipTokenizer | null, window: CaptionWindow = { encoder: 'clip', tokens: CLIP_MAX_TOKENS }): TokenCount {
  if (window.encoder === 't5') {
    return { count: tokenizer ? tokenizer.count(text) : estimateClipTokens(text), limit: window.tokens, exact: false, encoder: 't5' };
  }
  return tokenizer
    ? { count: tokenizer.count(text), limit: window.tokens, exact: true }
    : { count: estimateClipTokens(text), limit: window.tokens, exact: false };
}

/** The warning for a caption past the window, or null when it fits. */
export function tokenWarning(t: TokenCount): string | null {
  if (t.count <= t.limit) return null;
  if (t.encoder === 't5') {
    return `caption is about ${t.count} tokens, over the T5 text encoder's ${t.limit}-token window; the end is cut off in training`;
  }
  const how = t.exact ? `${t.count} CLIP tokens` : `about ${t.count} CLIP tokens (estimated: no tokenizer files given)`;
  return `caption is ${how}, over the text encoder's ${t.limit}-token window; the end is cut off in training`;
}
