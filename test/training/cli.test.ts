/**
 * `booth train`, `status`, `logs`, `stop`, `resume`, `extend` and `runs` end to end through the
 * built CLI: the local launcher starts a detached worker (`booth worker`) that runs the
 * protocol-exact stand-in trainer, against a real folder store.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFsStore } from '../../src/storage/drivers/fs.js';
import { booth as run, json } from '../helpers/cli.js';
import { STAND_IN, preparedSession } from '../helpers/training.js';
import { parseEventLine } from '../../src/training/protocol.js';

let dir: string;
let storeDir: string;
let env: Record<string, string>;
const booth = (args: string[]) => run(storeDir, args, env);

interface StatusJson {
  state: string;
  record: { run: string; launches: Array<{ attempt: number; handle: { pid: number } }> };
  status: { step: number; total: number; resumeStates: number[]; message: string } | null;
}

async function waitFor(session: string, predicate: (s: StatusJson) => boolean, what: string): Promise<StatusJson> {
  for (let i = 0; i < 600; i++) {
    const r = await booth(['status', session, '--json']);
    if (r.code === 0) {
      const s = json<StatusJson>(r.stdout);
      if (predicate(s)) return s;
    }
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'booth-train-cli-'));
  storeDir = path.join(dir, 'store');
  const store = createFsStore({ root: storeDir });
  await preparedSession(store, 'bag', dir);
  await store.close();
  env = {
    BOOTH_TRAINER: JSON.stringify([process.execPath, STAND_IN]),
    BOOTH_WORK_DIR: path.join(dir, 'work'),
    STANDIN_STEP_MS: '20',
  };
}, 120_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const small = ['--set', 'schedule.unet.steps=30', '--set', 'resumeState.every=5', '--set', 'prior.classImages=2', '--set', 'samples.every=0'];

describe('booth train and friends', () => {
  it('--dry-run prints the spec and the memory estimate without launching; --help teaches the presets', async () => {
    const r = await booth(['train', 'bag', '--dry-run', '--json', ...small]);
    expect(r.code, r.stderr).toBe(0);
    const out = json<{ spec: { schedule: { unet: { steps: number } } }; preset: string; estimatedVramGb: number }>(r.stdout);
    expect(out.preset).toBe('object-sd15');
    expect(out.spec.schedule.unet.steps).toBe(30);
    expect(out.estimatedVramGb).toBeGreaterThan(5);
    expect((await booth(['runs', 'bag', '--json'])).stdout).toContain('"runs": []');
    const help = await booth(['train', '--help']);
    expect(help.stdout).toMatch(/face-lora-sdxl/);
    expect(help.stdout).toMatch(/--set <path=value>/);
  });

  it('refuses bad overrides and unprepared sessions with a clear message', async () => {
    const bad = await booth(['train', 'bag', '--set', 'optimizer.type=sgd']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/optimizer\.type/);
    const missing = await booth(['train', 'nope']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/session "nope" does not exist/);
    const noRuns = await booth(['status', 'bag']);
    expect(noRuns.code).toBe(1);
    expect(noRuns.stderr).toMatch(/no training runs yet; start one with `booth train bag`/);
  });

  it('train → stop → resume → done → extend, with every step exactly once across attempts', async () => {
    // The stand-in waits after step 8 until it is signalled, so the stop lands mid-run however slow the machine is.
    const started = await run(storeDir, ['train', 'bag', '--json', ...small], { ...env, STANDIN_PAUSE_AT: '8' });
    expect(started.code, started.stderr).toBe(0);
    const { run: id, attempt } = json<{ run: string; attempt: number }>(started.stdout);
    expect(attempt).toBe(1);

    await waitFor('bag', (s) => (s.status?.step ?? 0) >= 8, 'step 8');
    const stopped = await booth(['stop', 'bag', '--wait', '--json']);
    expect(stopped.code, stopped.stderr).toBe(0);
    const stoppedJson = json<{ state: string; step: number }>(stopped.stdout);
    expect(stoppedJson.state).toBe('stopped');
    expect(stoppedJson.step).toBe(8);
    const human = await booth(['status', 'bag']);
    expect(human.stdout).toMatch(/STOPPED/);
    expect(human.stdout).toMatch(/Next: booth resume bag/);
    const stopAgain = await booth(['stop', 'bag']);
    expect(stopAgain.code).toBe(1);
    expect(stopAgain.stderr).toMatch(/cannot stop run .*stopped/);

    const resumed = await booth(['resume', 'bag', '--json']);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(json<{ attempt: number }>(resumed.stdout).attempt).toBe(2);
    // Follow the log until the run ends.
    const follow = await booth(['logs', 'bag', '-f']);
    expect(follow.code, follow.stderr).toBe(0);
    expect(follow.stdout).toMatch(/done at step 30/);
    expect(follow.stderr).toMatch(/: done/);
    const done = await waitFor('bag', (s) => s.state === 'done', 'done');
    expect(done.status?.step).toBe(30);

    const extended = await booth(['extend', 'bag', '--steps', '40', '--json']);
    expect(extended.code, extended.stderr).toBe(0);
    expect(json<{ attempt: number }>(extended.stdout).attempt).toBe(3);
    const done2 = await waitFor('bag', (s) => s.state === 'done' && s.record.launches.length === 3, 'extended run done');
    expect(done2.status?.step).toBe(40);

    const raw = await booth(['logs', 'bag', id, '--raw']);
    const steps = raw.stdout
      .split('\n')
      .map(parseEventLine)
      .flatMap((p) => (p.kind === 'event' && p.event.event === 'step' ? [p.event.step] : []));
    expect(steps).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));

    const runs = json<{ runs: Array<{ run: string; state: string; attempts: number }> }>((await booth(['runs', 'bag', '--json'])).stdout);
    expect(runs.runs).toEqual([expect.objectContaining({ run: id, state: 'done', attempts: 3 })]);
    const resumeDone = await booth(['resume', 'bag']);
    expect(resumeDone.code).toBe(1);
    expect(resumeDone.stderr).toMatch(/it finished; use `booth extend bag/);
  });

  it('a worker killed with SIGKILL shows as lost and resumes from the last complete state', async () => {
    const started = await run(storeDir, ['train', 'bag', '--json', ...small], { ...env, STANDIN_PAUSE_AT: '12' });
    expect(started.code, started.stderr).toBe(0);
    const { run: id, handle } = json<{ run: string; handle: { pid: number } }>(started.stdout);
    await waitFor('bag', (s) => s.record.run === id && (s.status?.step ?? 0) >= 12 && (s.status?.resumeStates ?? []).includes(10), 'step 12');
    // The worker leads its own process group (detached): kill it and the trainer at once, no warning.
    process.kill(-handle.pid, 'SIGKILL');
    const lost = await waitFor('bag', (s) => s.state === 'lost', 'lost');
    const last = lost.status!.resumeStates.at(-1)!;
    expect(last).toBe(10);
    const human = await booth(['status', 'bag']);
    expect(human.stdout).toMatch(/LOST/);
    expect(human.stdout).toMatch(/booth resume bag/);
    const resumed = await booth(['resume', 'bag', '--json']);
    expect(resumed.code, resumed.stderr).toBe(0);
    await waitFor('bag', (s) => s.state === 'done' && s.record.launches.length === 2, 'done after resume');
    const second = await booth(['logs', 'bag', id, '--raw', '--attempt', '2']);
    const firstStep = second.stdout
      .split('\n')
      .map(parseEventLine)
      .find((p) => p.kind === 'event' && p.event.event === 'step');
    expect(firstStep?.kind === 'event' && firstStep.event.event === 'step' && firstStep.event.step).toBe(last + 1);
  });
});
