// python-socketio's client (tests/python/sio_client.py) against the same gateway and test
// backend as the Node client: a second implementation of Engine.IO 4 / Socket.IO 5.
// Needs the venv scripts/test makes (.venv-tests, from tests/python/requirements.txt), or
// CASCADE_TEST_PYTHON naming a Python that has python-socketio; fails loudly without one.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { API_KEY, ROOT, startGateway } from './support.mjs';
import { hooksEnv, startBackend } from './sio_support.mjs';

const PYTHON = process.env.CASCADE_TEST_PYTHON || path.join(ROOT, '.venv-tests', 'bin', 'python');

let gateway;
let backend;

before(async () => {
  assert.ok(existsSync(PYTHON), `${PYTHON} is missing: scripts/test makes it (pip install -r tests/python/requirements.txt)`);
  backend = await startBackend(() => gateway.url);
  gateway = await startGateway(hooksEnv(backend.url));
});

after(async () => {
  await gateway?.stop();
  await backend?.close();
});

for (const mode of ['websocket', 'polling', 'default']) {
  test(`python-socketio over ${mode}: ack, a published event, a private message`, async () => {
    const script = path.join(ROOT, 'tests', 'python', 'sio_client.py');
    const output = await new Promise((resolve, reject) => {
      execFile(
        PYTHON,
        [script, gateway.url, `py_${mode}`, mode],
        { env: { ...process.env, CASCADE_API_KEY: API_KEY }, timeout: 60_000 },
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)),
      );
    });
    const result = JSON.parse(output.trim().split('\n').pop());
    assert.equal(result.ok, true);
    assert.equal(result.transport, mode === 'polling' ? 'polling' : 'websocket');
  });
}
