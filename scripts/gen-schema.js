#!/usr/bin/env node
// Writes trainer/booth_trainer/spec.schema.json from the zod job spec (src/training/spec.ts), so the
// Python trainer validates exactly what the control plane writes. Run after `npm run build`;
// test/training/spec.test.ts fails when the committed file drifts from the schema.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { jobSpecJsonSchema } from '../dist/training/spec.js';

const out = fileURLToPath(new URL('../trainer/booth_trainer/spec.schema.json', import.meta.url));
writeFileSync(out, `${JSON.stringify(jobSpecJsonSchema(), null, 2)}\n`);
process.stdout.write(`wrote ${out}\n`);
