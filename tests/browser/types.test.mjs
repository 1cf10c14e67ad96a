// The client as a package: its hand-written types check against a TypeScript usage file
// (client/types-test/usage.ts, whose @ts-expect-error lines must fail too), and the
// package loads as is, with no build step, at the version the script reports.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

test('cascade.d.ts type-checks an application that uses the client, and refuses misuse', async () => {
  const tsc = path.join(root, 'node_modules/typescript/bin/tsc');
  const project = path.join(root, 'client/types-test');
  const { code, output } = await new Promise((resolve) => {
    execFile(process.execPath, [tsc, '-p', project], { cwd: root, timeout: 60000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? 1) : 0, output: stdout + stderr });
    });
  });
  assert.equal(code, 0, `tsc -p client/types-test failed:\n${output}`);
});

test('the client package loads as is, at the version its script reports', () => {
  const require = createRequire(import.meta.url);
  const manifest = JSON.parse(readFileSync(path.join(root, 'client/package.json'), 'utf8'));
  const Cascade = require(path.join(root, 'client'));
  assert.equal(typeof Cascade.connect, 'function');
  assert.equal(Cascade.version, manifest.version);
  assert.deepEqual(Cascade.transports, ['websocket', 'sse', 'longpoll', 'poll']);
  for (const file of manifest.files) {
    assert.ok(readFileSync(path.join(root, 'client', file)).length > 0, file);
  }
  assert.equal(manifest.types, 'cascade.d.ts');
  assert.equal(manifest.main, 'cascade.js');
});
