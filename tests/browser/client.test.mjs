// The client file itself: ECMAScript 5 only, usable from CommonJS, and served by the
// gateway at /cascade.js with caching headers and a working ETag.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';

import * as acorn from 'acorn';

import { ROOT, startGateway } from './support.mjs';

const CLIENT = path.join(ROOT, 'client', 'cascade.js');

for (const file of ['client/cascade.js', 'demo/demo.js']) {
  test(`${file} parses as ECMAScript 5`, () => {
    const source = readFileSync(path.join(ROOT, file), 'utf8');
    // Throws a SyntaxError naming the line of any ES2015+ syntax (let, =>, classes, ...).
    acorn.parse(source, { ecmaVersion: 5, sourceType: 'script' });
  });
}

test('the client loads through CommonJS without a browser', () => {
  const require = createRequire(import.meta.url);
  const Cascade = require(CLIENT);
  assert.equal(typeof Cascade.connect, 'function');
  assert.deepEqual(Cascade.transports, ['websocket', 'sse', 'longpoll', 'poll']);
});

test('GET /cascade.js serves the file with caching headers and honours If-None-Match', async () => {
  const gateway = await startGateway();
  try {
    const response = await fetch(`${gateway.url}/cascade.js`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'application/javascript; charset=utf-8');
    assert.match(response.headers.get('cache-control'), /max-age=\d+/);
    const etag = response.headers.get('etag');
    assert.match(etag, /^"[0-9a-f]{16}"$/);
    assert.equal(await response.text(), readFileSync(CLIENT, 'utf8'), 'the binary embeds this file');

    const again = await fetch(`${gateway.url}/cascade.js`, { headers: { 'if-none-match': etag } });
    assert.equal(again.status, 304);
    assert.equal(again.headers.get('etag'), etag);
    assert.equal(await again.text(), '');

    const other = await fetch(`${gateway.url}/cascade.js`, { headers: { 'if-none-match': '"stale"' } });
    assert.equal(other.status, 200);

    const post = await fetch(`${gateway.url}/cascade.js`, { method: 'POST' });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD');
  } finally {
    await gateway.stop();
  }
});
