/**
 * Inserting the subject into a captioner's text. Models are asked to write a placeholder
 * (`<subject>`) where the subject goes; the trigger phrase and class noun are then put in by this
 * code, never trusted to the model, and the result must contain `<trigger> <class>` exactly once.
 * Common slips are repaired: the model wrote the class noun instead of the placeholder ("a man
 * smiling"), the placeholder twice, the trigger word itself, or an article before the placeholder.
 * Anything else is an error for that photo, so no caption without the subject reaches training.
 */
import { BoothError } from '../errors.js';
import type { Subject } from '../sessions/manifest.js';

/** The placeholder models write for the subject. */
export const SUBJECT_PLACEHOLDER = '<subject>';

// Also accept the bracket styles models fall back to.
const PLACEHOLDER = /<\s*subject\s*>|\[\s*subject\s*\]|\{\s*subject\s*\}/gi;

/** Nouns a model may use for a subject of each kind when it does not use the placeholder. */
const STAND_INS: Record<Subject['kind'], string[]> = {
  person: ['person', 'man', 'woman', 'boy', 'girl', 'guy', 'lady', 'child', 'individual'],
  object: ['object', 'item', 'product', 'animal', 'pet', 'dog', 'cat'],
  style: [],
};

const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** Words bounded by non-letters/digits (works for non-ASCII trigger phrases, unlike `\b`). */
function wordRe(phrase: string, flags = 'giu'): RegExp {
  return new RegExp(`(?<![\\p{L}\\p{N}])${escapeRe(phrase).replace(/\s+/g, '\\s+')}(?![\\p{L}\\p{N}])`, flags);
}

/**
 * How many times `<trigger> <class>` occurs in `caption` as whole words (case-insensitive).
 * @example countSubject('a photo of ohwx man', { trigger: 'ohwx', classNoun: 'man', kind: 'person' }) // 1
 */
export function countSubject(caption: string, subject: Pick<Subject, 'trigger' | 'classNoun'>): number {
  return [...caption.matchAll(wordRe(`${subject.trigger} ${subject.classNoun}`))].length;
}

/**
 * Put the subject into a captioner's text.
 * @param text - model output using {@link SUBJECT_PLACEHOLDER}
 * @param subject - trigger phrase, class noun, kind
 * @param photo - the photo's name, for the error message
 * @returns the caption (whitespace tidied) with `<trigger> <class>` exactly once, and what was repaired
 * @throws BoothError `CAPTION_FAILED` when the text is empty or names no subject that could be replaced
 * @example
 * insertSubject('a close-up photo of <subject>, smiling', { trigger: 'ohwx', classNoun: 'man', kind: 'person' }, '01.jpg')
 * // { caption: 'a close-up photo of ohwx man, smiling', repaired: null }
 */
export function insertSubject(text: string, subject: Subject, photo: string): { caption: string; repaired: string | null } {
  const phrase = `${subject.trigger} ${subject.classNoun}`;
  let t = text.replace(/\s+/g, ' ').trim().replace(/^["'“”]+|["'“”]+$/g, '').trim();
  if (t === '') throw new BoothError('CAPTION_FAILED', `${photo}: the captioner returned an empty caption; caption it again or set one by hand`);
  const repairs: string[] = [];
  // The model wrote our words itself: treat them as the placeholder, and drop a lone trigger.
  if (wordRe(phrase).test(t)) {
    t = t.replace(wordRe(phrase), SUBJECT_PLACEHOLDER);
    repairs.push('subject words written by the model');
  }
  if (wordRe(subject.trigger).test(t)) {
    t = t.replace(wordRe(subject.trigger), '');
    repairs.push('stray trigger word removed');
  }
  let count = [...t.matchAll(PLACEHOLDER)].length;
  if (count === 0) {
    // No placeholder: the first "a/the <class noun>" (or a kind's stand-in noun) is the subject.
    for (const noun of [subject.classNoun, ...STAND_INS[subject.kind]]) {
      const re = new RegExp(`(?:(?<![\\p{L}\\p{N}])(?:a|an|the|this|that)\\s+)?${wordRe(noun).source}`, 'iu');
      if (re.test(t)) {
        t = t.replace(re, SUBJECT_PLACEHOLDER);
        repairs.push(`"${noun}" taken as the subject`);
        count = 1;
        break;
      }
    }
  }
  if (count === 0) {
    throw new BoothError(
      'CAPTION_FAILED',
      `${photo}: the caption ${JSON.stringify(text.slice(0, 200))} does not say where the subject is (no ${SUBJECT_PLACEHOLDER} and no "${subject.classNoun}"), ` +
        `so "${phrase}" cannot be inserted; caption it again or set one by hand`,
    );
  }
  let seen = 0;
  t = t.replace(PLACEHOLDER, () => (seen++ === 0 ? SUBJECT_PLACEHOLDER : `the ${subject.classNoun}`));
  if (seen > 1) repairs.push(`placeholder ${seen} times: later ones became "the ${subject.classNoun}"`);
  // "a <subject>" reads "a ohwx man": DreamBooth captions name the subject without an article.
  t = t.replace(/(?<![\p{L}\p{N}])(?:a|an|the)\s+<subject>/giu, SUBJECT_PLACEHOLDER);
  const caption = t
    .replace(SUBJECT_PLACEHOLDER, phrase)
    .replace(/\s+([,.;:!?])/g, '$1')
    .replace(/,(?:\s*,)+/g, ',')
    .replace(/^[\s,;:]+|[\s,;:]+$/g, '')
    .replace(/\s+/g, ' ')
    .trim();
  const n = countSubject(caption, subject);
  if (n !== 1) {
    throw new BoothError(
      'CAPTION_FAILED',
      `${photo}: the caption ${JSON.stringify(caption.slice(0, 200))} contains "${phrase}" ${n} times after insertion; it must be exactly once; caption it again or set one by hand`,
    );
  }
  return { caption, repaired: repairs.length > 0 ? repairs.join('; ') : null };
}
