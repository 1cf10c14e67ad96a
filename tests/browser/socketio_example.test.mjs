// The example Socket.IO page (examples/socketio/index.html: io(), emit('login', name),
// on('msg'), rooms) in headless Chromium, with socket.io-client's own browser bundle,
// against the gateway with the example config and the example backend
// (examples/chat/backend.py): one window on the default transports (polling, then the
// upgrade), one on polling only.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { API_KEY, DEADLINE_MS, ROOT, freePort, launchBrowser, openPage, startGateway } from './support.mjs';

let gateway;
let backend;
let front;
let browser;

/** The example backend, on a free port, calling the gateway at `gatewayUrl`. */
async function startExampleBackend(gatewayUrl) {
  const child = spawn('python3', [path.join(ROOT, 'examples', 'chat', 'backend.py')], {
    env: {
      ...process.env,
      CHAT_LISTEN: '127.0.0.1:0',
      CASCADE_URL: gatewayUrl,
      CASCADE_API_KEY: API_KEY,
      CASCADE_HOOKS_SECRET: 'dev-hooks',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the backend did not start')), DEADLINE_MS);
    child.stdout.on('data', (chunk) => {
      const found = /on (http:\/\/\S+)/.exec(String(chunk));
      if (found) {
        clearTimeout(timer);
        resolve(found[1]);
      }
    });
  });
  return { url, stop: () => child.kill('SIGTERM') };
}

/** Serves the example page and socket.io-client's browser bundle. */
async function startFront() {
  const files = {
    '/': ['text/html', path.join(ROOT, 'examples', 'socketio', 'index.html')],
    '/socket.io.min.js': ['application/javascript', path.join(ROOT, 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js')],
  };
  const server = http.createServer((req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname];
    if (!file) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': file[0] }).end(readFileSync(file[1]));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { origin: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

before(async () => {
  front = await startFront();
  const port = await freePort();
  backend = await startExampleBackend(`http://127.0.0.1:${port}`);
  gateway = await startGateway(
    { CASCADE_HOOKS_URL: backend.url, CASCADE_ALLOWED_ORIGINS: front.origin },
    port,
    { config: path.join(ROOT, 'examples', 'chat', 'cascade.toml') },
  );
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
  backend?.stop();
  front?.close();
});

async function open(name, transports) {
  const page = await openPage(browser);
  const query = new URLSearchParams({ server: gateway.url, ...(transports ? { transports } : {}) });
  await page.goto(`${front.origin}/?${query}`);
  await page.waitForFunction(() => window.chat && window.chat.connected, null, { timeout: DEADLINE_MS });
  await page.fill('#name', name);
  await page.click('#login button');
  await page.waitForFunction((n) => window.chat.me === n, name, { timeout: DEADLINE_MS });
  return page;
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#say button');
}

function seen(page, text) {
  return page.waitForFunction((t) => window.chat.lines.some((l) => l.text === t), text, { timeout: DEADLINE_MS });
}

test('the Socket.IO chat page runs unchanged on Cascade in Chromium', async () => {
  const alice = await open('alice');
  const bob = await open('bob', 'polling');
  try {
    await say(alice, 'hello everyone');
    await seen(bob, 'alice: hello everyone');
    await say(bob, '/w alice psst');
    await seen(alice, '(private) bob: psst');
    await say(alice, '/join lobby');
    await say(bob, '/join lobby');
    await seen(alice, 'bob joined');
    await say(alice, '/to lobby room talk');
    await seen(bob, 'alice: room talk');
    // Everyone but the sender: alice has her own line once, from the page itself.
    const lines = await alice.evaluate(() => window.chat.lines.map((l) => l.text));
    assert.equal(lines.filter((t) => t === 'alice: hello everyone').length, 1, lines.join('\n'));
    await alice.waitForFunction(() => /websocket/.test(document.getElementById('status').textContent), null, { timeout: DEADLINE_MS });
    assert.match(await bob.textContent('#status'), /polling/);
  } catch (err) {
    const lines = async (page) => JSON.stringify(await page.evaluate(() => window.chat.lines));
    throw new Error(
      `${err.stack}\nalice: ${await lines(alice)} ${alice.logs.join('\n')}\nbob: ${await lines(bob)} ${bob.logs.join('\n')}`,
    );
  }
});
