/**
 * The Slurm launcher's pure parts, no Slurm needed: settings from file, environment and flags;
 * the batch script (directives, quoting, the shell actually parsing what was rendered); sbatch,
 * squeue, scontrol and sacct output; probe and stop against a fake command runner; the derived
 * run state for scheduler launches; the multi-GPU trainer command.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isBoothError } from '../../src/errors.js';
import { loadSlurmSettings, slurmSettingsSchema } from '../../src/training/launchers/slurm-settings.js';
import {
  SLURM_TEMPLATE,
  createSlurmLauncher,
  parseSacct,
  parseSbatchOutput,
  parseScontrolJob,
  parseSqueueLine,
  probeStateOf,
  renderBatchScript,
  renderTemplate,
  shellQuote,
  type SlurmRunner,
} from '../../src/training/launchers/slurm.js';
import { effectiveState, needsProbe, type RunRecord, type RunStatus } from '../../src/training/runs.js';
import { resolveTrainerCommand } from '../../src/training/trainer-command.js';

let dir: string;
let template: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'booth-slurm-unit-'));
  template = await readFile(SLURM_TEMPLATE, 'utf8');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const RUN = '20261122-153012-9f3a';
const input = { session: 'alice', run: RUN, attempt: 3, storeUrl: 's3://bucket/booth data', output: '/home/me/.cache/booth/slurm/alice/x/slurm-%j.out', chdir: '/home/me/.cache/booth/slurm/alice/x' };

describe('Slurm settings', () => {
  it('layers file < environment < flags, with defaults', async () => {
    const file = path.join(dir, 'slurm.json');
    await writeFile(file, JSON.stringify({ partition: 'gpu', time: '08:00:00', modules: ['cuda/12.4'], env: { HF_HOME: '/scratch/hf' } }));
    const s = loadSlurmSettings({ time: '02:00:00', sbatch: [] }, { BOOTH_SLURM_CONFIG: file, BOOTH_SLURM_PARTITION: 'a100', BOOTH_SLURM_GPUS: '4', BOOTH_SLURM_REQUEUE: 'no', BOOTH_SLURM_SETUP: 'source ~/venv/bin/activate\n\nexport X=1' });
    expect(s).toMatchObject({ partition: 'a100', time: '02:00:00', gpus: 4, requeue: false, gpuFlag: 'gres', modules: ['cuda/12.4'], env: { HF_HOME: '/scratch/hf' } });
    expect(s.setup).toEqual(['source ~/venv/bin/activate', 'export X=1']);
    // No lead set: the launcher takes the run's own (from its resume-state size) at submission.
    expect(s.signalGrace).toBeUndefined();
  });

  it('names the setting, the variable and what to do when a value is bad', async () => {
    const empty = path.join(dir, 'empty.json');
    await writeFile(empty, '{}');
    const err = (() => {
      try {
        loadSlurmSettings({ partition: 'gpu a100' }, { BOOTH_SLURM_CONFIG: empty });
      } catch (e) {
        return e;
      }
    })();
    expect(isBoothError(err, 'INVALID_ARGUMENT')).toBe(true);
    expect((err as Error).message).toMatch(/Slurm setting "partition" is invalid .*BOOTH_SLURM_PARTITION.*docs\/slurm\.md/);
    expect(() => loadSlurmSettings({}, { BOOTH_SLURM_CONFIG: empty, BOOTH_SLURM_GPUS: 'two' })).toThrow(/BOOTH_SLURM_GPUS="two": expected a whole number/);
    expect(() => loadSlurmSettings({}, { BOOTH_SLURM_CONFIG: path.join(dir, 'none.json') })).toThrow(/none\.json .*cannot be read as JSON/);
    await writeFile(path.join(dir, 'typo.json'), JSON.stringify({ partiton: 'gpu' }));
    expect(() => loadSlurmSettings({}, { BOOTH_SLURM_CONFIG: path.join(dir, 'typo.json') })).toThrow(/Slurm setting/);
  });
});

describe('batch script', () => {
  it('renders the resources as #SBATCH lines: gres or gpus, time, account, requeue and the warning signal', () => {
    const s = slurmSettingsSchema.parse({ partition: 'gpu', gpus: 2, gpuType: 'a100', cpus: 16, mem: '64G', time: '04:00:00', account: 'lab', qos: 'high', constraint: 'a100|h100', signalGrace: 600, sbatch: ['--exclusive', '#SBATCH --mail-type=END'] });
    const script = renderBatchScript(template, s, input);
    const directives = script.split('\n').filter((l) => l.startsWith('#SBATCH'));
    expect(directives).toEqual([
      '#SBATCH --job-name=booth-alice',
      `#SBATCH --output=${input.output}`,
      '#SBATCH --open-mode=append',
      `#SBATCH --chdir=${input.chdir}`,
      '#SBATCH --partition=gpu',
      '#SBATCH --nodes=1',
      '#SBATCH --ntasks=1',
      '#SBATCH --gres=gpu:a100:2',
      '#SBATCH --cpus-per-task=16',
      '#SBATCH --mem=64G',
      '#SBATCH --time=04:00:00',
      '#SBATCH --account=lab',
      '#SBATCH --qos=high',
      '#SBATCH --constraint=a100|h100',
      '#SBATCH --requeue',
      '#SBATCH --signal=B:USR1@600',
      '#SBATCH --exclusive',
      '#SBATCH --mail-type=END',
    ]);
    // Two GPUs: the worker launches the trainer through accelerate, one process per GPU.
    expect(script).toMatch(/worker alice 20261122-153012-9f3a .*--processes 2/);
    expect(script).not.toMatch(/\{\{\w+\}\}/);
    const gpus = renderBatchScript(template, slurmSettingsSchema.parse({ gpus: 1, gpuFlag: 'gpus' }), input);
    expect(gpus).toContain('#SBATCH --gpus=1');
    expect(gpus).not.toContain('--processes');
    const cpuOnly = renderBatchScript(template, slurmSettingsSchema.parse({ gpus: 0, requeue: false }), input);
    expect(cpuOnly).not.toMatch(/--gres|--gpus/);
    expect(cpuOnly).toContain('#SBATCH --no-requeue');
  });

  it('quotes every value so bash reads back exactly what was meant', () => {
    for (const word of ['plain', "it's", 'a b', '$HOME', '`id`', '"q"', '', 'x;rm -rf /', 'ünï']) {
      expect(execFileSync('bash', ['-c', `printf %s ${shellQuote(word)}`]).toString()).toBe(word);
    }
    const s = slurmSettingsSchema.parse({ gpus: 0, modules: ['cuda/12.4'], setup: ['echo setup-ran'], env: { WEIRD: "it's $HOME `id`" } });
    const script = renderBatchScript(template, s, { ...input, env: { EXTRA: 'a b' } });
    expect(script).toContain("module load cuda/12.4");
    expect(script).toContain('echo setup-ran');
    // bash -n parses the whole script; then evaluate just the exports.
    execFileSync('bash', ['-n'], { input: script });
    const exports = script.split('\n').filter((l) => l.startsWith('export ')).join('\n');
    expect(execFileSync('bash', ['-c', `${exports}\nprintf '%s|%s' "$WEIRD" "$EXTRA"`]).toString()).toBe("it's $HOME `id`|a b");
    // The store URL with a blank stays one argument of the worker command.
    expect(script).toContain("--store 's3://bucket/booth data' worker alice");
  });

  it('refuses what #SBATCH lines cannot carry and unknown placeholders', () => {
    const s = slurmSettingsSchema.parse({ sbatch: ['exclusive'] });
    expect(() => renderBatchScript(template, s, input)).toThrow(/"sbatch" entry "exclusive" is not one sbatch option/);
    expect(() => renderBatchScript(template, slurmSettingsSchema.parse({}), { ...input, output: '/home/my docs/slurm-%j.out' })).toThrow(/BOOTH_SLURM_LOG_DIR/);
    expect(() => renderTemplate('{{nope}}', {})).toThrow(/\{\{nope\}\}/);
  });

  it('forwards USR1 to the worker, waits for it, and requeues on exit 75 (run by bash with stand-ins for the worker and scontrol)', async () => {
    const bin = path.join(dir, 'bin');
    await mkdir(bin, { recursive: true });
    // A fake worker: on USR1 it "saves" for a moment and exits 75; a fake scontrol records its arguments.
    await writeFile(path.join(bin, 'fake-worker'), '#!/bin/bash\necho "worker args: $*"\ntrap \'sleep 0.3; echo saved; exit 75\' USR1\nwhile :; do sleep 0.05; done\n', { mode: 0o755 });
    await writeFile(path.join(bin, 'scontrol'), `#!/bin/bash\necho "$*" > ${dir}/scontrol-args\n`, { mode: 0o755 });
    const s = slurmSettingsSchema.parse({ gpus: 0, node: path.join(bin, 'fake-worker'), cli: 'main.js' });
    const script = renderBatchScript(template, s, input);
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn('bash', ['-c', script], { env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, SLURM_JOB_ID: '77', SLURM_RESTART_COUNT: '2' } });
      let text = '';
      child.stdout.on('data', (d: Buffer) => (text += d.toString()));
      child.stderr.on('data', (d: Buffer) => (text += d.toString()));
      // Signal once the worker runs (its first line is out), as Slurm's warning would arrive.
      const poll = setInterval(() => {
        if (text.includes('worker args')) {
          clearInterval(poll);
          child.kill('SIGUSR1');
        }
      }, 20);
      child.on('error', reject);
      child.on('exit', (code) => resolve(`${text}exit ${code}`));
    });
    expect(out).toContain('attempt 5 (restart 2)'); // launch attempt 3 + 2 restarts
    expect(out).toMatch(/worker args: main\.js --store .* worker alice 20261122-153012-9f3a --grace \d+ --attempt 5/);
    expect(out).toContain('received SIGUSR1');
    expect(out).toContain('saved');
    expect(out).toContain('requeueing job 77');
    expect(out).toMatch(/exit 0$/);
    expect((await readFile(path.join(dir, 'scontrol-args'), 'utf8')).trim()).toBe('requeue 77');
  });
});

describe('Slurm command output', () => {
  it('parses sbatch --parsable, squeue, scontrol show job and sacct', () => {
    expect(parseSbatchOutput('4242\n')).toEqual({ jobId: '4242' });
    expect(parseSbatchOutput('4242;gpu-cluster\n')).toEqual({ jobId: '4242', cluster: 'gpu-cluster' });
    expect(() => parseSbatchOutput('sbatch: error: Batch job submission failed')).toThrow(/did not print a job id/);
    expect(parseSqueueLine('PENDING|Priority')).toEqual({ state: 'pending', detail: 'Slurm job PENDING (Priority)' });
    expect(parseSqueueLine('RUNNING|None')).toEqual({ state: 'running', detail: 'Slurm job RUNNING' });
    expect(parseSqueueLine('')).toBeNull();
    expect(parseScontrolJob('JobId=7 JobName=booth-a JobState=TIMEOUT Reason=TimeLimit Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:15')).toEqual({ state: 'gone', detail: 'Slurm job TIMEOUT (TimeLimit), exit 0:15' });
    expect(parseSacct('REQUEUED|0:0\nCANCELLED by 0|0:15\n')).toEqual({ state: 'gone', detail: 'Slurm job CANCELLED by 0, exit 0:15' });
    expect(['PENDING', 'REQUEUED', 'CONFIGURING', 'RUNNING', 'COMPLETING', 'COMPLETED', 'FAILED', 'NODE_FAIL', 'OUT_OF_MEMORY', 'PREEMPTED', ''].map(probeStateOf)).toEqual([
      'pending', 'pending', 'pending', 'running', 'running', 'gone', 'gone', 'gone', 'gone', 'gone', 'unknown',
    ]);
  });

  it('probe falls back from squeue to scontrol to sacct, and calls a forgotten job gone', async () => {
    const calls: string[] = [];
    const fake = (answers: Record<string, { exitCode: number; stdout?: string; stderr?: string }>): SlurmRunner => async (command, args) => {
      calls.push(`${command} ${args.join(' ')}`);
      const a = answers[command] ?? { exitCode: 1, stderr: `${command}: not faked` };
      return { exitCode: a.exitCode, stdout: a.stdout ?? '', stderr: a.stderr ?? '' };
    };
    const launcher = (runner: SlurmRunner) => createSlurmLauncher({ settings: slurmSettingsSchema.parse({}), runner, env: {} });
    expect(await launcher(fake({ squeue: { exitCode: 0, stdout: 'RUNNING|None\n' } })).probe({ jobId: '9' })).toEqual({ state: 'running', detail: 'Slurm job RUNNING' });
    const forgotten = fake({ squeue: { exitCode: 1, stderr: 'slurm_load_jobs error: Invalid job id specified' }, scontrol: { exitCode: 1, stderr: 'Invalid job id specified' }, sacct: { exitCode: 1, stderr: 'Slurm accounting storage is disabled' } });
    expect((await launcher(forgotten).probe({ jobId: '9' })).state).toBe('gone');
    const accounted = fake({ squeue: { exitCode: 1, stderr: 'Invalid job id specified' }, scontrol: { exitCode: 1, stderr: 'Invalid job id specified' }, sacct: { exitCode: 0, stdout: 'OUT_OF_MEMORY|0:125\n' } });
    expect(await launcher(accounted).probe({ jobId: '9' })).toEqual({ state: 'gone', detail: 'Slurm job OUT_OF_MEMORY, exit 0:125' });
    const down = fake({ squeue: { exitCode: 1, stderr: 'Unable to contact slurm controller' }, scontrol: { exitCode: 1, stderr: 'Unable to contact slurm controller' } });
    const unknown = await launcher(down).probe({ jobId: '9' });
    expect(unknown.state).toBe('unknown');
    expect(unknown.detail).toMatch(/Unable to contact slurm controller/);

    calls.length = 0;
    await launcher(fake({ squeue: { exitCode: 0, stdout: 'RUNNING|None' }, scancel: { exitCode: 0 } })).stop({ jobId: '9' });
    expect(calls.at(-1)).toBe('scancel --batch --signal=TERM 9');
    calls.length = 0;
    await launcher(fake({ squeue: { exitCode: 0, stdout: 'PENDING|Priority' }, scancel: { exitCode: 0 } })).stop({ jobId: '9' });
    expect(calls.at(-1)).toBe('scancel 9');
    calls.length = 0;
    await launcher(fake({ squeue: { exitCode: 0, stdout: 'COMPLETED|None' } })).stop({ jobId: '9' });
    expect(calls.some((c) => c.startsWith('scancel'))).toBe(false);
  });

  it('a missing sbatch says where to run and what to install', async () => {
    const launcher = createSlurmLauncher({ settings: slurmSettingsSchema.parse({ logDir: dir, gpus: 0 }), env: { PATH: '/nonexistent' } });
    await expect(launcher.launch({ session: 'alice', run: RUN, attempt: 1, storeUrl: 'file:///tmp/x' })).rejects.toThrow(/sbatch is not on PATH: run this on the cluster's login node, or install Slurm's client tools/);
  });
});

describe('run state from the store and the scheduler', () => {
  const record = (stop = false): RunRecord => ({
    version: 1, session: 'alice', run: RUN, createdAt: '', preset: null, stopRequestedAt: stop ? 'now' : null, extensions: [],
    launches: [{ attempt: 1, at: '', launcher: 'slurm', handle: { jobId: '9' }, reason: 'train' }],
  });
  const status = (state: RunStatus['state'], attempt = 1): RunStatus => ({
    version: 1, session: 'alice', run: RUN, attempt, state, message: null, step: 10, total: 20, stage: null, stageStep: null, stageTotal: null, loss: null, lr: null, itPerS: null, etaS: null, vramGb: null,
    lossHistory: [], resumeStates: [], samples: [], model: null, error: null, worker: { host: 'node7', pid: 1 }, startedAt: '', updatedAt: '', finishedAt: null,
  });
  const probe = (state: 'pending' | 'running' | 'gone' | 'unknown') => ({ state });

  it('derives launched, lost, stopped and the requeued state without touching status.json', () => {
    expect(effectiveState(record(), null, 'login', probe('pending'))).toBe('launched');
    expect(effectiveState(record(), null, 'login', probe('gone'))).toBe('lost');
    expect(effectiveState(record(true), null, 'login', probe('gone'))).toBe('stopped');
    expect(effectiveState(record(), status('running'), 'login', probe('running'))).toBe('running');
    expect(effectiveState(record(), status('running'), 'login', probe('gone'))).toBe('lost');
    expect(effectiveState(record(), status('running'), 'login', probe('pending'))).toBe('launched');
    expect(effectiveState(record(), status('preempted', 2), 'login', probe('pending'))).toBe('launched');
    expect(effectiveState(record(), status('preempted', 2), 'login', probe('gone'))).toBe('preempted');
    expect(effectiveState(record(true), status('preempted', 2), 'login', probe('gone'))).toBe('stopped');
    expect(effectiveState(record(), status('running'), 'login', probe('unknown'))).toBe('running');
    expect(effectiveState(record(), status('done'), 'login')).toBe('done');
  });

  it('asks the scheduler only while the worker has not reported a final state', () => {
    expect(needsProbe(record(), null)).toBe(true);
    expect(needsProbe(record(), status('running'))).toBe(true);
    expect(needsProbe(record(), status('preempted'))).toBe(true);
    expect(needsProbe(record(), status('done'))).toBe(false);
    expect(needsProbe(record(), status('failed'))).toBe(false);
  });
});

describe('multi-GPU trainer command', () => {
  it('launches train through accelerate with one process per GPU; check stays a single process', () => {
    const one = resolveTrainerCommand({ BOOTH_PYTHON: '/opt/venv/bin/python' });
    expect(one.command).toEqual(['/opt/venv/bin/python', '-m', 'booth_trainer']);
    expect(one.train).toBeUndefined();
    const four = resolveTrainerCommand({ BOOTH_PYTHON: '/opt/venv/bin/python' }, { processes: 4 });
    expect(four.command).toEqual(['/opt/venv/bin/python', '-m', 'booth_trainer']);
    expect(four.train).toEqual(['/opt/venv/bin/python', '-m', 'accelerate.commands.launch', '--num_processes', '4', '--num_machines', '1', '--multi_gpu', '-m', 'booth_trainer']);
    const custom = resolveTrainerCommand({ BOOTH_PYTHON: '/p', BOOTH_TRAINER_PROCESSES: '2', BOOTH_ACCELERATE: '["accelerate","launch","--config_file","/etc/a.yaml"]' });
    expect(custom.train).toEqual(['accelerate', 'launch', '--config_file', '/etc/a.yaml', '--num_processes', '2', '--num_machines', '1', '--multi_gpu', '-m', 'booth_trainer']);
    expect(() => resolveTrainerCommand({ BOOTH_TRAINER_PROCESSES: 'x' })).toThrow(/BOOTH_TRAINER_PROCESSES/);
  });
});
