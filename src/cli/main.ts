#!/usr/bin/env node
/**
 * The `booth` command line. The command forms listed in the foundation issue are a contract that
 * scripts rely on: options may be added, existing forms must keep working. Every command that
 * reports something takes `--json` (one JSON document on stdout); human output goes to stdout,
 * progress bars and logs to stderr. Exit codes: 0 success, 1 failure, 2 usage error.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { BoothError, errorMessage, isBoothError } from '../errors.js';
import { BASE_MODELS, BASE_MODEL_INFO, baseModelChoices, type BaseModel } from '../sessions/base-models.js';
import { FRAMINGS, type Framing } from '../preprocess/types.js';
import { addPhotos, type AddResult } from '../sessions/intake.js';
import { exportDataset, exportReview } from '../sessions/dataset.js';
import { registerTrainCommands } from './train.js';
import { checkName, createCli, phasedProgress, print, usage, type Context } from './shared.js';
import { formatPhotoTable, formatSessionList, localPath } from './format.js';
import { registerExportCommands } from './export.js';
import { registerCaptionCommands } from './caption.js';
import { registerServeCommands } from './serve.js';

const program = new Command();
const cli = createCli(program);
const context = cli.context;

/**
 * The prepare pipeline pulls in TensorFlow.js and the face models; load it only for the commands
 * that prepare, so `--help`, `session list` and friends start fast.
 */
async function loadPipeline() {
  return import('../preprocess/pipeline.js');
}

/** `prepare` as the `prepare` and `new` commands run it: with progress, then the report. */
async function runPrepare(ctx: Context, name: string, o: { framing?: Framing; identity?: 'auto' | 'off' }, json: boolean): Promise<void> {
  const bars = phasedProgress(json);
  const { prepareSession } = await loadPipeline();
  let report;
  try {
    report = await prepareSession(ctx.sessions, name, { framing: o.framing, identity: o.identity, logger: ctx.logger, onProgress: bars.onProgress });
  } finally {
    bars.stop();
  }
  const m = await ctx.sessions.get(name);
  print(json, report, () => {
    const sheet = localPath(ctx.store, report.contactSheet.html);
    return (
      `${formatPhotoTable(m, ctx.store)}\n\n` +
      `Prepared in ${(report.elapsedMs / 1000).toFixed(1)} s (${report.analysed} photo(s) analysed, the rest from cache).\n` +
      `Review: ${sheet ?? `booth review ${name} <dir>`}\n` +
      `Next: booth dataset export ${name} <dir>`
    );
  });
}

program
  .name('booth')
  .description(
    'Booth: DreamBooth training sets and runs, kept in object storage.\n\n' +
      'Typical flow:\n' +
      '  booth session create alice --trigger ohwx --class woman --kind person --base sd15\n' +
      '  booth add alice ./photos/alice\n' +
      '  booth prepare alice            # faces, identity, crops, captions, contact sheet\n' +
      '  booth dataset export alice ./alice-dataset',
  )
  .option('--store <url>', 'object store: file:///path, ./folder or s3://bucket/prefix (default: $BOOTH_STORAGE or file://./booth-data)')
  .option('--log-level <level>', 'log level for stderr JSON logs: fatal, error, warn, info, debug (default: $BOOTH_LOG_LEVEL or warn)')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

/** `--resolution`: a whole number of pixels (the session checks it against the base model). */
function parsePixels(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`--resolution must be a whole number of pixels such as 1024, got ${JSON.stringify(value)}`);
  return n;
}

const session = program.command('session').description('create, list, show and delete sessions');

session
  .command('create <name>')
  .description('create a session for one subject')
  .requiredOption('--trigger <phrase>', 'rare-token trigger phrase the model learns, e.g. ohwx')
  .requiredOption('--class <noun>', 'class noun of the subject, e.g. man, woman, dog, backpack')
  .addOption(new Option('--kind <kind>', 'subject kind: person crops on the face; object/style crop on the salient region').choices(['person', 'object', 'style']).default('person'))
  .addOption(new Option('--base <model>', `base model: ${baseModelChoices()}`).choices([...BASE_MODELS]).default('sd15'))
  .option('--resolution <px>', 'training resolution when the base allows several (FLUX.1, SD 3.5: 512, 768 or 1024; default the native one)', parsePixels)
  .addOption(new Option('--framing <framing>', 'how tightly people are cropped').choices([...FRAMINGS]).default('face'))
  .option('--caption-template <template>', 'caption template with {trigger} and {class}', 'photo of {trigger} {class}')
  .option('--json', 'print the manifest as JSON')
  .action(async (name: string, o: { trigger: string; class: string; kind: 'person' | 'object' | 'style'; base: BaseModel; resolution?: number; framing: Framing; captionTemplate: string; json?: boolean }) => {
    checkName(name);
    const { sessions } = await context();
    const m = await sessions.create({
      name,
      subject: { trigger: o.trigger, classNoun: o.class, kind: o.kind },
      base: o.base,
      settings: { framing: o.framing, captionTemplate: o.captionTemplate, ...(o.resolution !== undefined ? { resolution: o.resolution } : {}) },
    });
    print(Boolean(o.json), m, () =>
      `Created session "${m.name}": ${m.subject.trigger} ${m.subject.classNoun} (${m.subject.kind}), ${BASE_MODEL_INFO[m.base].label} at ${m.settings.resolution} px.\n` +
      `Next: booth add ${m.name} <photos or folder>`,
    );
  });

session
  .command('list')
  .description('list sessions')
  .option('--json', 'print JSON')
  .action(async (o: { json?: boolean }) => {
    const { sessions } = await context();
    const all = await sessions.list();
    const rows = all.map((s) => ({
      name: s.name,
      error: s.error,
      ...(s.manifest
        ? {
            subject: s.manifest.subject,
            base: s.manifest.base,
            state: s.manifest.state,
            photos: s.manifest.photos.length,
            accepted: s.manifest.photos.filter((p) => p.status === 'accepted').length,
            updatedAt: s.manifest.updatedAt,
          }
        : {}),
    }));
    print(Boolean(o.json), { sessions: rows }, () => formatSessionList(all));
  });

session
  .command('show <name>')
  .description('show a session and the per-photo results')
  .option('--json', 'print the manifest as JSON (photos[] with name, sha256, status, flags, reason, crop, face, …)')
  .action(async (name: string, o: { json?: boolean }) => {
    checkName(name);
    const { sessions, store } = await context();
    const m = await sessions.get(name);
    print(Boolean(o.json), m, () => formatPhotoTable(m, store));
  });

session
  .command('delete <name>')
  .description('delete a session and everything stored under it')
  .option('--yes', 'confirm the deletion (required: nothing can be recovered)')
  .option('--json', 'print JSON')
  .action(async (name: string, o: { yes?: boolean; json?: boolean }) => {
    checkName(name);
    if (!o.yes) usage(`deleting "${name}" removes its photos, dataset and runs for good; add --yes to confirm`);
    const { sessions } = await context();
    const n = await sessions.delete(name);
    print(Boolean(o.json), { deleted: name, objects: n }, () => `Deleted session "${name}" (${n} objects).`);
  });

program
  .command('add <name> <paths...>')
  .description('add photos (files and/or folders) to a session; duplicates are skipped, bad files rejected with a reason')
  .option('--json', 'print per-file results as JSON')
  .action(async (name: string, paths: string[], o: { json?: boolean }) => {
    checkName(name);
    const { sessions, logger } = await context();
    const bars = phasedProgress(Boolean(o.json));
    let results: AddResult[];
    try {
      results = await addPhotos(sessions, name, paths, { logger, onProgress: (done, total, r) => bars.onProgress('adding', done, total, r.name) });
    } finally {
      bars.stop();
    }
    const count = (k: AddResult['outcome']) => results.filter((r) => r.outcome === k).length;
    const summary = { added: count('added'), duplicate: count('duplicate'), rejected: count('rejected'), skipped: count('skipped') };
    print(Boolean(o.json), { session: name, summary, results }, () => {
      const mark: Record<AddResult['outcome'], string> = { added: '+ added    ', duplicate: '= duplicate', rejected: 'x rejected ', skipped: '- skipped  ' };
      const lines = results.map((r) => `${mark[r.outcome]} ${r.name}${r.reason ? `: ${r.reason}` : ''}${r.warnings.length ? ` (${r.warnings.join('; ')})` : ''}`);
      lines.push(`${summary.added} added, ${summary.duplicate} duplicate, ${summary.rejected} rejected, ${summary.skipped} skipped.`);
      if (summary.added > 0) lines.push(`Next: booth prepare ${name}`);
      return lines.join('\n');
    });
    if (summary.added === 0 && summary.duplicate === 0 && results.length > 0) process.exitCode = 1;
  });

program
  .command('prepare <name>')
  .description('detect faces, find the subject, crop, flag bad photos, caption, and render the contact sheet')
  .addOption(new Option('--framing <framing>', 'override the session framing (persisted)').choices([...FRAMINGS]))
  .addOption(new Option('--identity <mode>', 'auto: keep only the subject found across photos; off: crop the most prominent face').choices(['auto', 'off']))
  .option('--json', 'print the report as JSON')
  .action(async (name: string, o: { framing?: Framing; identity?: 'auto' | 'off'; json?: boolean }) => {
    checkName(name);
    await runPrepare(await context(), name, o, Boolean(o.json));
  });

program
  .command('new <name> <paths...>')
  .description(
    'the whole job in one command: create the session (or reuse it when the subject matches), add the photos, prepare. ' +
      'Safe to run again after an interruption: finished work is kept, duplicates are skipped',
  )
  .requiredOption('--trigger <phrase>', 'rare-token trigger phrase, e.g. ohwx')
  .requiredOption('--class <noun>', 'class noun, e.g. man, woman, dog, backpack')
  .addOption(new Option('--kind <kind>', 'subject kind').choices(['person', 'object', 'style']).default('person'))
  .addOption(new Option('--base <model>', `base model: ${baseModelChoices()}`).choices([...BASE_MODELS]).default('sd15'))
  .option('--resolution <px>', 'training resolution when the base allows several (FLUX.1, SD 3.5: 512, 768 or 1024)', parsePixels)
  .addOption(new Option('--framing <framing>', 'how tightly people are cropped').choices([...FRAMINGS]))
  .addOption(new Option('--identity <mode>', 'auto: keep only the subject found across photos; off: crop the most prominent face').choices(['auto', 'off']))
  .option('--json', 'print the prepare report as JSON')
  .action(
    async (
      name: string,
      paths: string[],
      o: { trigger: string; class: string; kind: 'person' | 'object' | 'style'; base: BaseModel; resolution?: number; framing?: Framing; identity?: 'auto' | 'off'; json?: boolean },
    ) => {
      checkName(name);
      const ctx = await context();
      const { sessions, logger } = ctx;
      const json = Boolean(o.json);
      const say = (line: string) => {
        if (!json) process.stdout.write(`${line}\n`);
      };
      const existing = await sessions.get(name).catch((err: unknown) => {
        if (isBoothError(err, 'NOT_FOUND')) return null;
        throw err;
      });
      if (existing) {
        const s = existing.subject;
        if (s.trigger !== o.trigger || s.classNoun !== o.class || s.kind !== o.kind || existing.base !== o.base || (o.resolution !== undefined && existing.settings.resolution !== o.resolution)) {
          throw new BoothError(
            'CONFLICT',
            `session "${name}" exists with a different subject or base (${s.trigger} ${s.classNoun}, ${s.kind}, ${existing.base}); pick another name or use the same options`,
          );
        }
        say(`Continuing session "${name}".`);
      } else {
        await sessions.create({
          name,
          subject: { trigger: o.trigger, classNoun: o.class, kind: o.kind },
          base: o.base,
          settings: { ...(o.framing ? { framing: o.framing } : {}), ...(o.resolution !== undefined ? { resolution: o.resolution } : {}) },
        });
        say(`Created session "${name}".`);
      }
      const bars = phasedProgress(json);
      let added: AddResult[];
      try {
        added = await addPhotos(sessions, name, paths, { logger, onProgress: (d, t, r) => bars.onProgress('adding', d, t, r.name) });
      } finally {
        bars.stop();
      }
      for (const r of added) if (r.outcome === 'rejected' || r.outcome === 'skipped') say(`x ${r.outcome} ${r.name}: ${r.reason ?? ''}`);
      await runPrepare(ctx, name, o, json);
    },
  );

const photo = program.command('photo').description('override automatic decisions for one photo');
for (const [verb, value, text] of [
  ['include', 'include', 'train on this photo even if it was flagged and excluded'],
  ['exclude', 'exclude', 'never train on this photo'],
  ['auto', null, 'go back to the automatic decision'],
] as const) {
  photo
    .command(`${verb} <name> <photo>`)
    .description(`${text}; <photo> is the file name as added or a SHA-256 prefix (takes effect at the next prepare)`)
    .option('--json', 'print JSON')
    .action(async (name: string, which: string, o: { json?: boolean }) => {
      checkName(name);
      const { sessions } = await context();
      let target = '';
      await sessions.update(name, (m) => {
        const hits = m.photos.filter((p) => p.name === which || (which.length >= 6 && p.sha256.startsWith(which.toLowerCase())));
        if (hits.length !== 1) {
          throw new BoothError('INVALID_ARGUMENT', `${hits.length === 0 ? 'no' : 'more than one'} photo in "${name}" matches ${JSON.stringify(which)}; use the name shown by \`booth session show ${name}\` or a longer SHA-256 prefix`);
        }
        const p = hits[0]!;
        p.override = value;
        target = p.name;
        m.state = 'created';
        return m;
      });
      print(Boolean(o.json), { session: name, photo: target, override: value }, () => `${target}: ${value ?? 'automatic'}. Run \`booth prepare ${name}\` to apply.`);
    });
}

const dataset = program.command('dataset').description('work with the prepared training set');
dataset
  .command('export <name> <dir>')
  .description('write instance images + .txt captions (and metadata.jsonl) into <dir>, the layout trainers read')
  .option('--json', 'print JSON')
  .action(async (name: string, dir: string, o: { json?: boolean }) => {
    checkName(name);
    const { sessions } = await context();
    const result = await exportDataset(sessions, name, dir);
    print(Boolean(o.json), result, () => `Exported ${result.images} image(s) with captions to ${result.dir}`);
  });

program
  .command('review <name> <dir>')
  .description('write the contact sheet (contact-sheet.png and a self-contained contact-sheet.html) into <dir>')
  .option('--json', 'print JSON')
  .action(async (name: string, dir: string, o: { json?: boolean }) => {
    checkName(name);
    const { sessions } = await context();
    const files = await exportReview(sessions, name, dir);
    print(Boolean(o.json), { files }, () => `Wrote ${files.join(' and ')}`);
  });

registerTrainCommands(cli);
registerCaptionCommands(cli);

registerExportCommands(cli);
registerServeCommands(cli);

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  // `booth logs … | head` closes the pipe early; that is the reader's choice, not a failure.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  try {
    await program.parseAsync(process.argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') {
        process.exitCode = 0;
      } else {
        if (err.code === 'booth.usage') process.stderr.write(`${err.message}\n`);
        process.exitCode = 2;
      }
    } else {
      const code = isBoothError(err) ? err.code : 'INTERNAL';
      const message = errorMessage(err);
      if (json) process.stdout.write(`${JSON.stringify({ error: { code, message } }, null, 2)}\n`);
      process.stderr.write(`booth: ${message}\n`);
      if (!isBoothError(err) && err instanceof Error && process.env.BOOTH_LOG_LEVEL === 'debug') process.stderr.write(`${err.stack}\n`);
      process.exitCode = 1;
    }
  } finally {
    await cli.close();
  }
}

await main();
