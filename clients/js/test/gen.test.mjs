// The committed src/protocol.ts must be what scripts/gen-types.mjs makes of the committed
// docs/protocol.schema.json (which the server's schema test keeps in step with its types).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { generate, OUTPUT, SCHEMA } from '../scripts/gen-types.mjs';

test('src/protocol.ts is generated from the current schema (run `npm run gen` if not)', () => {
  assert.equal(readFileSync(OUTPUT, 'utf8'), generate(readFileSync(SCHEMA, 'utf8')));
});

test('every error code of the schema is in the generated ErrorCode type', () => {
  const schema = JSON.parse(readFileSync(SCHEMA, 'utf8'));
  const generated = readFileSync(OUTPUT, 'utf8');
  const codes = JSON.stringify(schema.$defs.ErrorCode).match(/"const":"[a-z_]+"|"enum":\[[^\]]*\]/g);
  assert.ok(codes?.length, 'the schema lists error codes');
  for (const code of ['bad_request', 'too_large', 'rate_limited', 'unavailable', 'forbidden', 'internal', 'not_a_member', 'unknown_message']) {
    assert.ok(generated.includes(`"${code}"`), code);
  }
});
