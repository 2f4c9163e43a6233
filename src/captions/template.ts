/**
 * Template captions: the offline baseline every prepared image gets (`photo of ohwx man`), so a
 * dataset is complete before any model-written caption exists. The trigger phrase and class noun
 * are inserted by code and the result is checked to contain `<trigger> <class>` exactly once.
 */
import { BoothError } from '../errors.js';

/** The subject words a caption must carry. */
export interface CaptionSubject {
  trigger: string;
  classNoun: string;
}

/**
 * Render a caption template. Placeholders: `{trigger}`, `{class}`.
 * @param template - e.g. `photo of {trigger} {class}`
 * @param subject - trigger phrase and class noun
 * @returns the caption, whitespace collapsed
 * @throws BoothError `INVALID_ARGUMENT` when the result does not contain `<trigger> <class>` exactly once
 * @example
 * renderTemplateCaption('photo of {trigger} {class}', { trigger: 'ohwx', classNoun: 'man' }); // 'photo of ohwx man'
 */
export function renderTemplateCaption(template: string, subject: CaptionSubject): string {
  const caption = template
    .replaceAll('{trigger}', subject.trigger)
    .replaceAll('{class}', subject.classNoun)
    .replace(/\s+/g, ' ')
    .trim();
  const phrase = `${subject.trigger} ${subject.classNoun}`;
  const count = caption.split(phrase).length - 1;
  if (count !== 1) {
    throw new BoothError(
      'INVALID_ARGUMENT',
      `caption template ${JSON.stringify(template)} gives ${JSON.stringify(caption)}, which contains "${phrase}" ${count} times; ` +
        'it must contain it exactly once: use "{trigger} {class}" once in the template',
    );
  }
  return caption;
}
