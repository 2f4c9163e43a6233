/**
 * The export commands: `booth export` (a run → `exports/<name>.safetensors` in the store),
 * `booth exports` (list them), `booth download` (an export → a local file, hash-checked) and
 * `booth convert` (any Diffusers folder or Diffusers/peft LoRA on disk → one `.safetensors`,
 * whoever trained it). Thin: parse, call `src/convert/`, print the SHA-256 and AutoV2 hash.
 */
import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Option } from 'commander';
import { BoothError } from '../errors.js';
import { checkName, phasedProgress, print, usage, type Cli } from './shared.js';

const MiB = 1024 * 1024;

function mibProgress(json: boolean, label: string) {
  const bars = phasedProgress(json);
  return {
    onProgress: (done: number, total: number) => bars.onProgress(label, Math.round(done / MiB), Math.round(total / MiB), 'MiB'),
    stop: () => bars.stop(),
  };
}

function parseStep(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v)) usage(`--step must be a whole number, got ${JSON.stringify(v)}`);
  return Number(v);
}

/**
 * Register `export`, `exports`, `download` and `convert` on the program.
 * @param cli - the CLI handle from `createCli`
 */
export function registerExportCommands(cli: Cli): void {
  const { program } = cli;

  program
    .command('export <session>')
    .description(
      'convert a trained run into one .safetensors file in the store (sessions/<session>/exports/<name>.safetensors, ' +
        'plus <name>.yaml for SD 2.x v-prediction and <name>.json with the hashes); prints SHA-256 and AutoV2',
    )
    .option('--run <run>', 'run id (default: the newest run whose model is complete)')
    .option('--step <n>', 'resume-state step: NOT exportable yet — only the final model of a run can be exported for now')
    .addOption(new Option('--dtype <dtype>', 'precision of the weights').choices(['fp16', 'bf16', 'fp32']).default('fp16'))
    .option('--name <name>', 'export name, the file stem (default: <session>-<run>)')
    .addOption(new Option('--lora-format <layout>', 'FLUX.1/SD 3.5 LoRAs: kohya (lora_unet_… names with fused qkv; ComfyUI, Forge, sd-scripts) or diffusers (transformer.… names); default kohya for FLUX.1, diffusers for SD 3.5').choices(['kohya', 'diffusers']))
    .option('--json', 'print the export record as JSON')
    .action(async (session: string, o: { run?: string; step?: string; dtype: 'fp16' | 'bf16' | 'fp32'; name?: string; loraFormat?: 'kohya' | 'diffusers'; json?: boolean }) => {
      checkName(session);
      const step = parseStep(o.step);
      const { store, logger } = await cli.context();
      const { exportRun } = await import('../convert/export.js');
      const json = Boolean(o.json);
      const bars = mibProgress(json, 'exporting');
      let rec;
      try {
        rec = await exportRun(store, session, {
          dtype: o.dtype,
          logger,
          onProgress: bars.onProgress,
          ...(o.run !== undefined ? { run: o.run } : {}),
          ...(o.name !== undefined ? { name: o.name } : {}),
          ...(o.loraFormat !== undefined ? { loraFormat: o.loraFormat } : {}),
          ...(step !== undefined ? { step } : {}),
        });
      } finally {
        bars.stop();
      }
      print(json, rec, () =>
        [
          `Exported run "${rec.run}" of "${session}" as ${rec.key} (${rec.kind}, ${rec.architecture}, ${rec.dtype}, ${(rec.size / MiB).toFixed(1)} MiB).`,
          `SHA-256: ${rec.sha256}`,
          `AutoV2:  ${rec.autov2}`,
          ...(rec.yamlKey ? [`Config:  ${rec.yamlKey} (SD 2.x v-prediction; keep it next to the file)`] : []),
          `Next: booth download ${session} ${rec.name} <path>`,
        ].join('\n'),
      );
    });

  program
    .command('exports <session>')
    .description('list the exports of a session')
    .option('--json', 'print JSON')
    .action(async (session: string, o: { json?: boolean }) => {
      checkName(session);
      const { store } = await cli.context();
      const { listExports } = await import('../convert/export.js');
      const all = await listExports(store, session);
      print(Boolean(o.json), { exports: all }, () =>
        all.length === 0
          ? `Session "${session}" has no exports yet; make one with \`booth export ${session}\`.`
          : all.map((e) => `${e.name}  ${e.kind} ${e.architecture} ${e.dtype}  ${(e.size / MiB).toFixed(1)} MiB  AutoV2 ${e.autov2}  run ${e.run}`).join('\n'),
      );
    });

  program
    .command('download <session> <name> [dest]')
    .description('copy an export to a local file (default ./<name>.safetensors; a folder puts it inside), checking its SHA-256; the .yaml sidecar comes along')
    .option('--json', 'print JSON')
    .action(async (session: string, name: string, dest: string | undefined, o: { json?: boolean }) => {
      checkName(session);
      const { store } = await cli.context();
      const { downloadExport } = await import('../convert/export.js');
      const r = await downloadExport(store, session, name, dest ?? `${name}.safetensors`);
      print(Boolean(o.json), r, () => [`Downloaded ${r.file} (${(r.size / MiB).toFixed(1)} MiB)${r.yaml ? ` and ${r.yaml}` : ''}.`, `SHA-256: ${r.sha256}`, `AutoV2:  ${r.autov2}`].join('\n'));
    });

  program
    .command('convert <input> <output>')
    .description(
      'convert a Diffusers folder (SD 1.x, 2.x, XL, SD 3.5; plain, sharded or variant weights) or a Diffusers/peft LoRA ' +
        '(SD 1.x/2.x/XL, FLUX.1, SD 3.5: pytorch_lora_weights.safetensors, or a folder holding it) into one .safetensors file; architecture detected from the configs',
    )
    .addOption(new Option('--arch <arch>', 'architecture (default: detected)').choices(['sd1', 'sd2', 'sdxl', 'flux', 'sd3']))
    .addOption(new Option('--release <name>', 'FLUX.1 dev|schnell or SD 3.5 medium|large, for the metadata (default: detected where the tensors tell, else dev/medium)').choices(['dev', 'schnell', 'medium', 'large']))
    .addOption(new Option('--lora-format <layout>', 'FLUX.1/SD 3.5 LoRAs: kohya or diffusers tensor names (default kohya for FLUX.1, diffusers for SD 3.5)').choices(['kohya', 'diffusers']))
    .addOption(new Option('--dtype <dtype>', 'precision of the weights').choices(['fp16', 'bf16', 'fp32']).default('fp16'))
    .option('--variant <variant>', 'read variant weights, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)')
    .addOption(new Option('--prediction <type>', 'prediction type (default: scheduler config, else v for SD 2.x at 768 px)').choices(['epsilon', 'v_prediction']))
    .option('--title <title>', 'modelspec.title (default: the input folder name)')
    .option('--trigger <phrase>', 'modelspec.trigger_phrase, e.g. "ohwx man"')
    .option('--json', 'print JSON')
    .action(
      async (
        input: string,
        output: string,
        o: {
          arch?: 'sd1' | 'sd2' | 'sdxl' | 'flux' | 'sd3';
          release?: 'dev' | 'schnell' | 'medium' | 'large';
          loraFormat?: 'kohya' | 'diffusers';
          dtype: 'fp16' | 'bf16' | 'fp32';
          variant?: string;
          prediction?: 'epsilon' | 'v_prediction';
          title?: string;
          trigger?: string;
          json?: boolean;
        },
      ) => {
        if (!output.endsWith('.safetensors')) usage(`the output must be a .safetensors file, got ${JSON.stringify(output)}`);
        const json = Boolean(o.json);
        const conv = await import('../convert/index.js');
        const st = await stat(input).catch(() => null);
        if (!st) throw new BoothError('NOT_FOUND', `no file or folder "${input}"`);
        const isModelFolder = async () => Boolean((await stat(path.join(input, 'unet')).catch(() => null)) ?? (await stat(path.join(input, 'transformer')).catch(() => null)));
        const loraFile = st.isFile() ? input : (await stat(path.join(input, conv.LORA_FILE)).catch(() => null))?.isFile() && !(await isModelFolder()) ? path.join(input, conv.LORA_FILE) : null;
        const common = {
          dtype: o.dtype,
          ...(o.arch ? { architecture: o.arch } : {}),
          ...(o.prediction ? { predictionType: o.prediction } : {}),
          ...(o.title ? { title: o.title } : {}),
          ...(o.trigger ? { triggerPhrase: o.trigger } : {}),
        };
        const bars = mibProgress(json, 'converting');
        const started = Date.now();
        let result;
        try {
          const planned = loraFile
            ? await conv.planLora(await conv.openFileSource(loraFile), { ...common, ...(o.release ? { release: o.release } : {}), ...(o.loraFormat ? { loraFormat: o.loraFormat } : {}) })
            : await conv.planCheckpoint(conv.localFolder(input), { ...common, ...(o.variant ? { variant: o.variant } : {}), ...(o.release ? { release: o.release } : {}) });
          try {
            const w = await conv.writePlanToFile(planned.plan, output, { onProgress: bars.onProgress });
            result = { ...w, facts: planned.facts, metadata: planned.plan.metadata, tensors: planned.plan.tensors.length };
          } finally {
            await planned.close();
          }
        } finally {
          bars.stop();
        }
        const yaml = output.replace(/\.safetensors$/, '.yaml');
        if (conv.needsV2Yaml(result.facts)) {
          const text = Buffer.from(conv.v2VPredictionYaml());
          await conv.writeFileAtomic(yaml, (async function* () {
            yield text;
          })());
        }
        else await rm(yaml, { force: true }).catch(() => undefined);
        const report = {
          output: path.resolve(output),
          yaml: conv.needsV2Yaml(result.facts) ? path.resolve(yaml) : null,
          kind: loraFile ? 'lora' : 'checkpoint',
          architecture: result.facts.architecture,
          predictionType: result.facts.predictionType,
          dtype: o.dtype,
          tensors: result.tensors,
          size: result.size,
          sha256: result.sha256,
          autov2: conv.autoV2(result.sha256),
          elapsedMs: Date.now() - started,
          metadata: result.metadata,
        };
        print(json, report, () =>
          [
            `Wrote ${report.output} (${report.kind}, ${report.architecture}, ${report.predictionType}, ${o.dtype}, ${report.tensors} tensors, ${(report.size / MiB).toFixed(1)} MiB) in ${(report.elapsedMs / 1000).toFixed(1)} s.`,
            `SHA-256: ${report.sha256}`,
            `AutoV2:  ${report.autov2}`,
            ...(report.yaml ? [`Config:  ${report.yaml} (SD 2.x v-prediction; keep it next to the file)`] : []),
          ].join('\n'),
        );
      },
    );
}
