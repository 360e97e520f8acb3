// Bundles the SDK (src/index.ts, ESM, for browsers) into web/peroxo-client.js, the file the
// gateway serves beside the chat page (`GET /peroxo-client.js`) and the page imports.
//
//   node scripts/build-web.mjs          writes web/peroxo-client.js   (npm run build:web)
//   node scripts/build-web.mjs --check  exits 1 when web/peroxo-client.js is not what it would write
//
// The bundle is committed, so that building and running the server (README's two commands)
// needs no Node.js; `npm run check` runs the --check form, so a change to src/ that is not
// bundled again fails there. It is not minified: it is read in reviews and in browsers'
// developer tools, and the gateway serves it as it is (`npm run size` measures the minified
// and gzipped size against the budget).

import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundle } from './bundle.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const OUTPUT = path.resolve(HERE, '../../../web/peroxo-client.js');

const BANNER = `// @peroxo/client, bundled for the chat page (web/chat.html imports it from /peroxo-client.js).
// Generated from clients/js/src by \`npm run build:web\` in clients/js: do not edit by hand.`;

const code = await bundle({ minify: false, legalComments: 'none', banner: { js: BANNER } });

if (process.argv.includes('--check')) {
  let committed = '';
  try { committed = readFileSync(OUTPUT, 'utf8'); } catch { /* missing: stale */ }
  if (committed !== code) {
    console.error(`${path.relative(process.cwd(), OUTPUT)} is stale: run \`npm run build:web\` in clients/js and commit it`);
    process.exit(1);
  }
  console.log('web/peroxo-client.js is up to date');
} else {
  writeFileSync(OUTPUT, code);
  console.log(`wrote ${OUTPUT} (${(code.length / 1024).toFixed(1)} KiB)`);
}
