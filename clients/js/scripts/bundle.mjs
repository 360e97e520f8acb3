// The SDK as one ES module for browsers (esbuild), shared by size.mjs (minified, to measure
// it) and build-web.mjs (readable, for the chat page).

import { build } from 'esbuild';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** The bundle's text; `options` go to esbuild (`minify`, `banner`, …). */
export async function bundle(options = {}) {
  const result = await build({
    entryPoints: [path.join(HERE, '../src/index.ts')],
    bundle: true,
    format: 'esm',
    target: 'es2022',
    platform: 'browser',
    write: false,
    ...options,
  });
  return result.outputFiles[0].text;
}
