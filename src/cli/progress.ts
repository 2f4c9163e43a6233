/**
 * Progress display for long CLI work: a bar on an interactive terminal (stderr, so stdout stays
 * parseable), nothing otherwise. Built on cli-progress.
 */
import cliProgress from 'cli-progress';

/** A progress reporter; all methods are no-ops when disabled. */
export interface Progress {
  start(total: number, label: string): void;
  update(done: number, detail?: string): void;
  stop(): void;
}

/**
 * Create a progress reporter.
 * @param enabled - show a bar (pass false for `--json` or when stderr is not a TTY)
 */
export function createProgress(enabled: boolean): Progress {
  if (!enabled) return { start() {}, update() {}, stop() {} };
  let bar: cliProgress.SingleBar | null = null;
  return {
    start(total, label) {
      bar?.stop();
      bar = new cliProgress.SingleBar(
        {
          stream: process.stderr,
          format: `${label.padEnd(10)} {bar} {value}/{total} | {eta_formatted} left | {detail}`,
          hideCursor: true,
          clearOnComplete: true,
          etaBuffer: 5,
        },
        cliProgress.Presets.shades_classic,
      );
      bar.start(total, 0, { detail: '' });
    },
    update(done, detail) {
      bar?.update(done, { detail: (detail ?? '').slice(0, 40) });
    },
    stop() {
      bar?.stop();
      bar = null;
    },
  };
}
