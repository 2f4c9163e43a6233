#!/usr/bin/env node
/**
 * The `booth` executable. It only checks the Node.js version and then loads the CLI: the CLI's
 * dependencies use Node 22 APIs at import time, so on an older Node a person would otherwise see
 * a stack trace from deep inside a library instead of what to do.
 */
const major = Number(process.versions.node.split('.')[0]);
if (major < 22) {
  process.stderr.write(`booth needs Node.js 22 or newer; this is ${process.version}. Install a current Node (e.g. \`npm install --prefix ~/.node24 node@24\` and put ~/.node24/node_modules/.bin first on PATH).\n`);
  process.exit(1);
}
await import('./main.js');
