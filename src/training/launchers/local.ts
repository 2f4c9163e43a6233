/**
 * The local launcher: runs `booth worker` as a detached process on this machine, so training
 * survives the CLI that started it (closing the terminal, Ctrl-C on `booth logs -f`). The worker's
 * own stdout/stderr go to `<work root>/<session>/<run>/worker-<attempt>.log`; training progress
 * and the trainer's log go to the store as for any launcher. Stop sends SIGTERM to the worker,
 * which forwards it to the trainer and uploads the resume state before exiting.
 */
import { spawn } from 'node:child_process';
import { mkdir, open } from 'node:fs/promises';
import { homedir, hostname } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BoothError, errorMessage } from '../../errors.js';
import { processAlive } from '../runs.js';
import type { LaunchHandle, LaunchProbe, LaunchRequest, Launcher } from './types.js';

/** The compiled CLI entry (dist/training/launchers → dist/cli/main.js). */
const CLI = fileURLToPath(new URL('../../cli/main.js', import.meta.url));

/** Default root of local work directories: `BOOTH_WORK_DIR` or `~/.cache/booth/work`. */
export function defaultWorkRoot(env: Record<string, string | undefined> = process.env): string {
  return env.BOOTH_WORK_DIR?.trim() || path.join(homedir(), '.cache', 'booth', 'work');
}

/** Work directory of one run under a root. */
export function runWorkDir(root: string, session: string, run: string): string {
  return path.join(root, session, run);
}

/** Options of {@link createLocalLauncher}. */
export interface LocalLauncherOptions {
  /** Root of work directories (default {@link defaultWorkRoot}). */
  workRoot?: string;
  /** Environment the worker inherits (default `process.env`). */
  env?: Record<string, string | undefined>;
  /** Extra `booth worker` arguments, e.g. `['--no-check']`. */
  workerArgs?: string[];
}

/**
 * Creates the local launcher.
 * @example const launcher = createLocalLauncher(); const handle = await launcher.launch({ session, run, attempt: 1, storeUrl: store.url });
 */
export function createLocalLauncher(options: LocalLauncherOptions = {}): Launcher {
  const env = options.env ?? process.env;
  const workRoot = options.workRoot ?? defaultWorkRoot(env);
  return {
    name: 'local',
    async launch(req: LaunchRequest): Promise<LaunchHandle> {
      const workDir = runWorkDir(workRoot, req.session, req.run);
      await mkdir(workDir, { recursive: true });
      const logFile = path.join(workDir, `worker-${req.attempt}.log`);
      const fh = await open(logFile, 'a');
      try {
        const args = [CLI, '--store', req.storeUrl, 'worker', req.session, req.run, '--attempt', String(req.attempt), '--work-dir', workDir, ...(options.workerArgs ?? [])];
        const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', fh.fd, fh.fd], env: { ...env, ...req.env } });
        const pid = await new Promise<number>((resolve, reject) => {
          child.once('error', reject);
          child.once('spawn', () => resolve(child.pid!));
        }).catch((err: unknown) => {
          throw new BoothError('ENVIRONMENT', `could not start the worker (${process.execPath}): ${errorMessage(err)}`, { cause: err });
        });
        child.unref();
        return { pid, host: hostname(), logFile, workDir };
      } finally {
        await fh.close();
      }
    },
    async stop(handle: LaunchHandle): Promise<void> {
      const pid = handle.pid;
      if (typeof pid !== 'number') return;
      if (handle.host !== hostname()) {
        throw new BoothError('CONFLICT', `this run's worker runs on host ${String(handle.host)}, not here (${hostname()}); run \`booth stop\` there`);
      }
      try {
        process.kill(pid, 'SIGTERM');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
      }
    },
    async probe(handle: LaunchHandle): Promise<LaunchProbe> {
      if (typeof handle.pid !== 'number') return { state: 'unknown' };
      if (handle.host !== hostname()) return { state: 'unknown', detail: `runs on host ${String(handle.host)}` };
      return processAlive(handle.pid) ? { state: 'running' } : { state: 'gone' };
    },
  };
}
