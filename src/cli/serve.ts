/**
 * `booth serve`: the REST API, live progress, webhooks and the web UI in one process, on the
 * store named by `--store`/`BOOTH_STORAGE`. It binds to 127.0.0.1 by default; any other address
 * needs a token (`--token` or `BOOTH_TOKEN`), since the API reads photos and starts GPU jobs.
 * New runs use the local launcher unless `--launcher slurm` (with the usual `BOOTH_SLURM_*` settings).
 */
import { Option } from 'commander';
import { assertSafeBinding } from '../server/auth.js';
import { launcherByName, LAUNCHERS } from '../training/launchers/index.js';
import { usage, type Cli } from './shared.js';

/** Registers `booth serve` on the root program. */
export function registerServeCommands(cli: Cli): void {
  cli.program
    .command('serve')
    .description('serve the REST API (documented at /docs), live run events and the web UI')
    .option('--host <address>', 'address to bind; anything but loopback needs a token', '127.0.0.1')
    .option('--port <n>', 'port (0 picks a free one)', '8080')
    .option('--token <secret>', 'bearer token required on every API route ($BOOTH_TOKEN); at least 16 characters off loopback')
    .addOption(new Option('--launcher <name>', 'where new runs train').choices([...LAUNCHERS]).default('local'))
    .action(async (o: { host: string; port: string; token?: string; launcher: 'local' | 'slurm' }) => {
      const port = Number(o.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`--port must be 0–65535, got ${JSON.stringify(o.port)}`);
      const token = o.token ?? process.env.BOOTH_TOKEN ?? null;
      try {
        assertSafeBinding(o.host, token);
      } catch (err) {
        usage((err as Error).message);
      }
      const { store, logger } = await cli.context();
      const { buildApp } = await import('../server/app.js');
      const app = await buildApp({
        store,
        logger,
        token,
        defaultLauncher: o.launcher,
        launcher: (name, opts) => launcherByName(name, { workerArgs: opts?.check === false ? ['--no-check'] : [] }),
        captions: { apiKey: process.env.OPENAI_API_KEY ?? null, baseURL: process.env.OPENAI_BASE_URL ?? null },
      });
      const address = await app.listen({ host: o.host, port });
      process.stderr.write(`booth serve: ${address} (store ${store.url})${token ? ', token required' : ', no token (loopback only)'}; API docs at ${address}/docs\n`);
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      await app.close();
    });
}
