import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, nextStepAfterClose, nextStepAfterRefusal } from '../../dist/index.js';

test('close codes choose the next step as PROTOCOL.md says', () => {
  for (const code of [1000, 1001, 1006, 1009, 1011, 1013, 4000]) assert.equal(nextStepAfterClose(code), 'reconnect', String(code));
  assert.equal(nextStepAfterClose(1008), 'stop');
  assert.equal(nextStepAfterClose(4001), 'fresh_token');
});

test('refused upgrades choose the next step by status', () => {
  assert.equal(nextStepAfterRefusal(401), 'fresh_token');
  for (const status of [429, 503]) assert.equal(nextStepAfterRefusal(status), 'reconnect');
  for (const status of [400, 403, 404, 426]) assert.equal(nextStepAfterRefusal(status), 'stop');
});

test('backoff doubles up to its maximum, with jitter of half either way', () => {
  const options = { initialMs: 100, maxMs: 1000 };
  for (let i = 0; i < 200; i++) {
    const first = backoffDelay(0, options);
    assert.ok(first >= 50 && first <= 150, String(first));
    const third = backoffDelay(2, options);
    assert.ok(third >= 200 && third <= 600, String(third));
    const late = backoffDelay(40, options);
    assert.ok(late >= 500 && late <= 1500, String(late));
  }
  assert.ok(new Set(Array.from({ length: 20 }, () => backoffDelay(3, options))).size > 5, 'jitter varies the delay');
});
