// Idle memory of a Socket.IO WebSocket on Cascade beside Cascade's own WebSocket, measured
// the same way: the gateway's VmRSS before and after N connections that idle, from one
// Node process: the real socket.io-client, WebSocket only, in the default namespace, each
// following its user's channel; the `ws` package subscribed to `chat` for Cascade's own.
//
//   CASCADE_BIN=target/release/cascade node benches/peers/sio_idle.mjs [N] [port]
//
// Prints one JSON line per transport: connections, rss_before_kib, rss_after_kib,
// kib_per_connection. Run it from the repository's root after `npm ci`.

import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';

import { io } from 'socket.io-client';
import WebSocket from 'ws';

const N = Number(process.argv[2] || 1000);
const PORT = Number(process.argv[3] || 49321);
const BIN = process.env.CASCADE_BIN || 'target/release/cascade';
const URL = `http://127.0.0.1:${PORT}`;
const SETTLE_MS = 5000;
const SECRET = 'sio-idle-bench-secret-of-some-length';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const rss = (pid) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

async function gateway() {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CASCADE_')));
  const child = spawn(BIN, [], {
    env: {
      ...env,
      CASCADE_LISTEN: `127.0.0.1:${PORT}`,
      CASCADE_LOG: 'warn',
      CASCADE_LIMITS_MAX_CONNECTIONS_PER_IP: '100000',
      CASCADE_TOKEN_HMAC_SECRET: SECRET,
    },
    stdio: 'ignore',
  });
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${URL}/healthz`)).ok) return child;
    } catch {}
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error('the gateway did not start');
}

async function measure(name, open) {
  const child = await gateway();
  try {
    await sleep(500);
    const before = rss(child.pid);
    const clients = [];
    for (let i = 0; i < N; i += 50) {
      const batch = [];
      for (let j = i; j < Math.min(N, i + 50); j++) batch.push(open());
      clients.push(...(await Promise.all(batch)));
    }
    await sleep(SETTLE_MS);
    const after = rss(child.pid);
    console.log(JSON.stringify({
      transport: name,
      connections: clients.length,
      rss_before_kib: before,
      rss_after_kib: after,
      kib_per_connection: Number(((after - before) / clients.length).toFixed(2)),
    }));
    for (const close of clients) close();
  } finally {
    child.kill('SIGTERM');
  }
}

// Each socket follows one channel, as each Cascade WebSocket below does: `user:bench`, the
// room of its token's user.
const token = execFileSync(BIN, ['token', '--sub', 'bench', '--channels', '', '--publish', '', '--ttl', '1h'], {
  env: { PATH: process.env.PATH, CASCADE_TOKEN_HMAC_SECRET: SECRET, CASCADE_LOG: 'warn' },
  encoding: 'utf8',
}).trim();

await measure('socketio-websocket', () => new Promise((resolve, reject) => {
  const socket = io(URL, { transports: ['websocket'], forceNew: true, reconnection: false, auth: { token } });
  socket.once('connect', () => resolve(() => socket.close()));
  socket.once('connect_error', reject);
}));

await measure('websocket', () => new Promise((resolve, reject) => {
  const ws = new WebSocket(`ws://127.0.0.1:${PORT}/ws`);
  ws.once('open', () => {
    ws.send(JSON.stringify({ op: 'subscribe', channels: ['chat'] }));
    ws.once('message', () => resolve(() => ws.close()));
  });
  ws.once('error', reject);
}));

process.exit(0);
