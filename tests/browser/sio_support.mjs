// The Socket.IO tests' backend: a hook server in this process that implements a small
// chat the way a Socket.IO server would (login from the handshake's `auth`, emits as RPCs,
// rooms through the server API), and helpers around the real `socket.io-client`.

import { createHmac } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

import { io } from 'socket.io-client';

import { API_KEY, DEADLINE_MS, sleep } from './support.mjs';

export const HOOKS_SECRET = 'socketio-test-hooks-secret';

/** Starts the hook backend; `gatewayUrl()` names the gateway it calls back. */
export async function startBackend(gatewayUrl) {
  const calls = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => (body += chunk));
    req.on('end', async () => {
      const ts = req.headers['x-cascade-timestamp'];
      const mac = createHmac('sha256', HOOKS_SECRET).update(`${ts}.${body}`).digest('hex');
      if (req.headers['x-cascade-signature'] !== `sha256=${mac}`) {
        res.writeHead(401).end('{}');
        return;
      }
      const event = req.url.split('/').pop();
      const call = JSON.parse(body);
      calls.push({ event, ...call });
      let answer;
      try {
        answer = { result: await handle(gatewayUrl(), event, call) };
      } catch (err) {
        answer = { error: { code: err.code || 'refused', message: err.message } };
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/cascade`,
    calls,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

async function api(gateway, path, body) {
  const response = await fetch(`${gateway}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-cascade-api-key': API_KEY },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(3000),
  });
  const text = await response.text();
  if (response.status !== 200) throw Object.assign(new Error(text), { code: 'gateway' });
  return JSON.parse(text);
}

async function handle(gateway, event, call) {
  if (event === 'connect') {
    const name = call.auth?.name;
    if (name === 'mallory') throw Object.assign(new Error('not you'), { code: 'banned' });
    return { user: name || null, channels: ['chat'] };
  }
  if (event !== 'rpc') return {};
  const [first] = call.params;
  switch (call.method) {
    case 'echo':
      return { params: call.params, user: call.user, client: call.client };
    case 'say':
      // Everyone but the sender.
      return api(gateway, '/publish', { channel: 'chat', event: 'msg', data: { from: call.user, text: first }, exclude_client: call.client });
    case 'whisper':
      return api(gateway, '/publish', { channel: `user:${first.to}`, event: 'msg', data: { from: call.user, text: first.text, private: true } });
    case 'join':
      await api(gateway, '/subscribe', { user: call.user, channel: `room:${first}` });
      return { joined: first };
    default:
      throw Object.assign(new Error(`no method ${call.method}`), { code: 'no_such_call' });
  }
}

/** The gateway's environment for the backend at `backendUrl`. */
export function hooksEnv(backendUrl) {
  return {
    CASCADE_HOOKS_URL: backendUrl,
    CASCADE_HOOKS_EVENTS: 'connect,rpc,disconnect',
    CASCADE_HOOKS_SECRET: HOOKS_SECRET,
    CASCADE_SOCKETIO_PING_INTERVAL_MS: '2000',
    CASCADE_SOCKETIO_PING_TIMEOUT_MS: '3000',
  };
}

/**
 * A config file whose top-level channels keep presence (no environment variable does);
 * the caller removes it once the gateway has read it.
 */
export function presenceConfig() {
  const file = path.join(os.tmpdir(), `cascade-sio-${process.pid}.toml`);
  writeFileSync(file, '[channels]\npresence = true\n');
  return file;
}

/** A connected socket of the real client; rejects on `connect_error`. */
export async function connect(url, options = {}) {
  const socket = io(url, { reconnection: false, forceNew: true, ...options });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('connect timed out')), DEADLINE_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      socket.close();
      reject(err);
    });
  });
  return socket;
}

/** Records every `event` a socket receives (its first argument). */
export function collect(socket, event) {
  const got = [];
  socket.on(event, (data) => got.push(data));
  return got;
}

/** Waits until `list` holds `count` items. */
export async function waitFor(list, count, ms = DEADLINE_MS) {
  const end = Date.now() + ms;
  while (list.length < count) {
    if (Date.now() > end) throw new Error(`got ${list.length} of ${count}: ${JSON.stringify(list)}`);
    await sleep(20);
  }
  return list;
}
