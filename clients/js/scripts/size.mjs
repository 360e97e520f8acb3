// Bundles the SDK (src/index.ts, minified, ESM, for browsers) with esbuild and reports its
// size gzipped; exits 1 above the budget of issue 16 (15 KiB minified and gzipped).

import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const BUDGET = 15 * 1024;
const HERE = path.dirname(fileURLToPath(import.meta.url));

const result = await build({
  entryPoints: [path.join(HERE, '../src/index.ts')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  platform: 'browser',
  write: false,
});
const code = result.outputFiles[0].contents;
const gzipped = gzipSync(code, { level: 9 }).length;
const kib = (n) => `${(n / 1024).toFixed(2)} KiB`;
console.log(`@peroxo/client: ${kib(code.length)} minified, ${kib(gzipped)} minified and gzipped (budget ${kib(BUDGET)})`);
if (gzipped > BUDGET) {
  console.error('over the size budget');
  process.exit(1);
}
