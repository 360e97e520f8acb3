// Bundles the SDK (src/index.ts, minified, ESM, for browsers) with esbuild and reports its
// size gzipped; exits 1 above the budget of issue 16 (15 KiB minified and gzipped).

import { gzipSync } from 'node:zlib';
import { bundle } from './bundle.mjs';

const BUDGET = 15 * 1024;

const code = Buffer.from(await bundle({ minify: true }));
const gzipped = gzipSync(code, { level: 9 }).length;
const kib = (n) => `${(n / 1024).toFixed(2)} KiB`;
console.log(`@peroxo/client: ${kib(code.length)} minified, ${kib(gzipped)} minified and gzipped (budget ${kib(BUDGET)})`);
if (gzipped > BUDGET) {
  console.error('over the size budget');
  process.exit(1);
}
