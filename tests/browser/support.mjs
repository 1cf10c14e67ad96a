// Shared harness of the browser tests: the gateway binary as a child process on a free
// 127.0.0.1 port, a small front proxy that serves the test page and can misbehave like the
// networks the client must survive, headless Chromium, and condition waits with deadlines.

import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = path.resolve(ROOT, process.env.CASCADE_BIN || 'target/debug/cascade');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** How long any single wait may take before the test fails. */
export const DEADLINE_MS = 20_000;

/** The backend's API key: test publishers are backends (X-Cascade-Api-Key). */
export const API_KEY = randomBytes(16).toString('hex');
/** The HS256 secret client tokens are signed with (see mintToken). */
export const TOKEN_SECRET = randomBytes(24).toString('hex');

/** The environment of this process without CASCADE_* variables, which would leak in. */
function cleanEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CASCADE_')));
}

/**
 * A client token from the binary's own `cascade token`, signed with TOKEN_SECRET (or with
 * the secret of `config`, a config file, when given).
 */
export function mintToken({ sub, channels = '', publish = '', ttl = '1h', config = null }) {
  const args = [...(config ? ['--config', config] : []), 'token', '--sub', sub, '--channels', channels, '--publish', publish, '--ttl', ttl];
  const env = { ...cleanEnv(), CASCADE_LOG: 'warn' };
  if (!config) env.CASCADE_TOKEN_HMAC_SECRET = TOKEN_SECRET;
  return execFileSync(BIN, args, { env, encoding: 'utf8', timeout: 10_000 }).trim();
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a truthy value, failing after `ms`. */
export async function eventually(what, check, ms = DEADLINE_MS) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Gateways still running, stopped by PID if the test process exits early. */
const running = new Set();
process.on('exit', () => {
  for (const pid of running) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts the gateway binary on `port` (a free one by default) with CASCADE_* overrides,
 * and waits for /healthz. Short timeouts keep the tests quick. Without `config` the
 * built-in (secure) defaults apply, with API_KEY and TOKEN_SECRET configured.
 */
export async function startGateway(env = {}, port = null, { config = null } = {}) {
  port = port ?? (await freePort());
  const child = spawn(BIN, config ? ['--config', config] : [], {
    env: {
      ...cleanEnv(),
      ...(config ? {} : { CASCADE_TOKEN_HMAC_SECRET: TOKEN_SECRET }),
      CASCADE_API_KEYS: API_KEY,
      CASCADE_LISTEN: `127.0.0.1:${port}`,
      CASCADE_SSE_HEARTBEAT_MS: '1000',
      CASCADE_SHUTDOWN_DRAIN_DEADLINE_MS: '2000',
      CASCADE_SHUTDOWN_RECONNECT_WINDOW_MS: '300',
      CASCADE_LOG: 'warn',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-20_000);
  });
  running.add(child.pid);
  const exited = new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      running.delete(child.pid);
      resolve({ code, signal });
    }),
  );
  // Over TLS when given a certificate (tls.test.mjs): fetch from this process then needs
  // NODE_TLS_REJECT_UNAUTHORIZED=0, which that test sets for its self-signed certificate.
  const scheme = env.CASCADE_TLS_CERT_FILE ? 'https' : 'http';
  const url = `${scheme}://127.0.0.1:${port}`;
  const gateway = {
    port,
    url,
    pid: child.pid,
    exited,
    get stderr() {
      return stderr;
    },
    /** Stops the process by its PID (SIGTERM drains; SIGKILL does not) and awaits the exit. */
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      process.kill(child.pid, signal);
      const timer = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL');
      }, 5000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
  try {
    await eventually(
      `gateway /healthz on ${url}`,
      async () => {
        if (child.exitCode !== null) throw new Error(`gateway exited early: ${stderr}`);
        try {
          const response = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) });
          return response.status === 200;
        } catch {
          return false;
        }
      },
      10_000,
    );
  } catch (err) {
    await gateway.stop('SIGKILL');
    throw err;
  }
  return gateway;
}

/** POST /publish as a backend; resolves with the acknowledgement, rejects on any failure. */
export async function publish(baseUrl, channel, data) {
  const response = await fetch(`${baseUrl}/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-cascade-api-key': API_KEY },
    body: JSON.stringify({ channel, data }),
    signal: AbortSignal.timeout(3000),
  });
  if (response.status !== 200) throw new Error(`publish answered ${response.status}: ${await response.text()}`);
  return response.json();
}

/** Publishes until it succeeds (the gateway may be restarting), within the deadline. */
export async function publishRetrying(baseUrl, channel, data, ms = DEADLINE_MS) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await publish(baseUrl, channel, data);
    } catch (err) {
      if (Date.now() > end) throw new Error(`publish kept failing: ${err.message}`);
      await sleep(25);
    }
  }
}

/**
 * Publishes {n} to `channel` every `everyMs` until stopped; `stop()` resolves with how many
 * were acknowledged. Used to time the first delivery of a page that is still connecting.
 */
export function ticker(baseUrl, channel, everyMs = 20) {
  let n = 0;
  let running = true;
  const done = (async () => {
    while (running) {
      try {
        await publish(baseUrl, channel, { n: n + 1 });
        n += 1;
      } catch {
        // the gateway may be briefly unavailable; the next tick tries again
      }
      await sleep(everyMs);
    }
    return n;
  })();
  return {
    stop() {
      running = false;
      return done;
    },
  };
}

/**
 * The value of one sample in Prometheus text, e.g. `metricValue(text, 'cascade_fallbacks_total',
 * {from: 'sse', reason: 'buffered'})`: the sum over series whose labels include `labels`.
 */
export function metricValue(text, name, labels = {}) {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] || '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

// ----------------------------------------------------------------------------------------
// The test page

/**
 * The page the tests load: it connects with the options in the URL fragment and records
 * what the application receives, in `window.__app`, with performance.now() times (0 is the
 * start of navigation).
 */
export const TEST_PAGE = `<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>cascade browser test</title>
<script src="/cascade.js"></script>
<script>
(function () {
  var options = JSON.parse(decodeURIComponent(location.hash.slice(1)) || '{}');
  var app = window.__app = {
    received: {}, transports: [], gaps: [], errors: [], refused: [], connects: 0, disconnects: [],
    firstMessageAt: null, firstTransportAt: null, tokensGiven: 0,
    startedAt: performance.now() // when the client starts: the page and script loaded
  };
  var clientOptions = options.client || {};
  if (options.tokens) {
    // The application's token source: hands out the given tokens one by one, later.
    clientOptions.getToken = function (done) {
      var token = options.tokens.shift();
      if (token) { app.tokensGiven += 1; }
      setTimeout(function () { done(token ? null : 'no tokens left', token); }, 10);
    };
  }
  var client = window.__client = Cascade.connect(options.url || '', clientOptions);
  (options.channels || []).forEach(function (channel) {
    app.received[channel] = [];
    client.subscribe(channel, function (data, message) {
      if (app.firstMessageAt === null) { app.firstMessageAt = performance.now(); }
      app.received[channel].push({ n: data && data.n, epoch: message.epoch, offset: message.offset, via: client.transport });
    });
  });
  client.on('transport', function (name) {
    if (app.firstTransportAt === null) { app.firstTransportAt = performance.now(); }
    app.transports.push(name);
  });
  client.on('connect', function () { app.connects += 1; });
  client.on('disconnect', function (info) { app.disconnects.push(info.reason); });
  client.on('gap', function (gap) { app.gaps.push(gap); });
  client.on('error', function (err) {
    app.errors.push(err.code);
    if (err.channel) { app.refused.push({ channel: err.channel, code: err.code }); }
  });
})();
</script>
`;

/** The URL of the test page on `origin` with `options` for the harness. */
export function testPageUrl(origin, options) {
  return `${origin}/__test.html#${encodeURIComponent(JSON.stringify(options))}`;
}

// ----------------------------------------------------------------------------------------
// The front proxy

/**
 * An HTTP proxy on 127.0.0.1 in front of the gateway, serving /__test.html itself. Its
 * `mode` can be changed while it runs:
 * - `bufferSse`: holds /sse response bytes back (headers pass at once), like a buffering
 *   reverse proxy; the client sees a stream that opens but never delivers.
 * - `websocket`: 'pass' pipes upgrades through, 'refuse' answers them 403, 'dead' completes
 *   the handshake itself and then passes nothing either way.
 */
export async function startFront(upstreamPort, mode = {}) {
  const state = { bufferSse: false, websocket: 'pass', ...mode };
  const sockets = new Set();
  // `failed`: the fallback reports the client sent (the `failed` of each /negotiate);
  // `paths`: requests by path (upgrades not included).
  const counts = { sse: 0, upgrades: 0, failed: [], paths: {} };
  const server = http.createServer((req, res) => {
    if (req.url.split('?')[0] === '/__test.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(TEST_PAGE);
      return;
    }
    const pathname = req.url.split('?')[0];
    counts.paths[pathname] = (counts.paths[pathname] || 0) + 1;
    if (req.url.startsWith('/negotiate')) {
      const failed = new URL(req.url, 'http://front').searchParams.get('failed');
      if (failed) counts.failed.push(failed);
    }
    const isSse = req.url.startsWith('/sse');
    if (isSse) counts.sse += 1;
    const upstream = http.request(
      { host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers, agent: false },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        if (isSse && state.bufferSse) {
          // Headers go through at once (as nginx does); the body is held until the upstream ends.
          res.flushHeaders();
          const held = [];
          up.on('data', (chunk) => held.push(chunk));
          up.on('end', () => res.end(Buffer.concat(held)));
        } else {
          up.pipe(res);
        }
        up.on('error', () => res.destroy());
      },
    );
    upstream.on('error', () => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end('{"error":{"code":"bad_gateway","message":"upstream unavailable"}}');
      } else {
        res.destroy();
      }
    });
    req.pipe(upstream);
    res.on('close', () => upstream.destroy());
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('upgrade', (req, socket, head) => {
    counts.upgrades += 1;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    if (state.websocket === 'refuse') {
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    if (state.websocket === 'dead') {
      const accept = createHash('sha1')
        .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
        .digest('base64');
      socket.write(
        'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
      );
      socket.on('data', () => {}); // swallowed
      return;
    }
    // Small frames both ways: Nagle's algorithm would hold them back for tens of ms.
    socket.setNoDelay(true);
    const upstream = net.connect({ port: upstreamPort, host: '127.0.0.1', noDelay: true }, () => {
      let head_ = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) head_ += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(head_ + '\r\n');
      if (head && head.length) upstream.write(head);
      upstream.pipe(socket);
      socket.pipe(upstream);
    });
    sockets.add(upstream);
    upstream.on('close', () => {
      sockets.delete(upstream);
      socket.destroy();
    });
    upstream.on('error', () => socket.destroy());
    socket.on('close', () => upstream.destroy());
  });
  const port = await new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
  return {
    url: `http://127.0.0.1:${port}`,
    mode: state,
    counts,
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

// ----------------------------------------------------------------------------------------
// The browser

/**
 * Headless Chromium from the Debian package, warmed up: a fresh browser's first page load,
 * WebSocket and event stream pay a few hundred milliseconds of start-up that would
 * otherwise land in the first scenario's timings. `args`: more Chromium switches.
 */
export async function launchBrowser({ args = [] } = {}) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      ...args,
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-quic',
      '--no-first-run',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const server = http.createServer((req, res) => {
    if (req.url === '/events') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.end('data: warm\n\n');
      return;
    }
    const script = req.url === '/warm.js';
    res.writeHead(200, { 'content-type': script ? 'application/javascript' : 'text/html' });
    res.end(script ? WARM_SCRIPT : '<link rel="icon" href="data:,"><script src="/warm.js"></script>');
  });
  const sockets = new Set();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('upgrade', (req, socket) => {
    const accept = createHash('sha1')
      .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
      .digest('base64');
    socket.on('error', () => socket.destroy());
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\n\r\n`,
    );
  });
  const port = await new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.waitForFunction(() => window.warm === 3, null, { timeout: DEADLINE_MS });
  await context.close();
  // Keep-alive and upgraded sockets would hold close() up: end them all, wait for none.
  server.close();
  for (const socket of sockets) socket.destroy();
  return browser;
}

const WARM_SCRIPT = `
window.warm = 1;
var ws = new WebSocket('ws://' + location.host + '/ws');
ws.onopen = function () { window.warm += 1; ws.close(); };
var es = new EventSource('/events');
es.onmessage = function () { window.warm += 1; es.close(); };
`;

/** Init scripts that take features away before any page script runs. */
export const WITHOUT = {
  websocket: () => {
    delete window.WebSocket;
  },
  eventsource: () => {
    delete window.EventSource;
  },
  sharedworker: () => {
    delete window.SharedWorker;
  },
  broadcastchannel: () => {
    delete window.BroadcastChannel;
  },
  // Web Locks: an attribute of Navigator.prototype, not of `navigator` itself.
  locks: () => {
    delete Navigator.prototype.locks;
  },
};

/**
 * What an old browser lacks: every feature the client would use beyond XMLHttpRequest and
 * localStorage (which such a browser has: its tabs share a connection through a leader
 * tab elected with a lease in localStorage, talking over `storage` events).
 */
export const LEGACY = ['websocket', 'eventsource', 'sharedworker', 'broadcastchannel', 'locks'];

/** A fresh context (fresh sessionStorage) and page, with `remove` features deleted. */
export async function openPage(browser, remove = []) {
  const context = await browser.newContext();
  const page = await context.newPage();
  for (const feature of remove) await page.addInitScript(WITHOUT[feature]);
  const logs = [];
  page.on('console', (msg) => logs.push(`${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
  page.logs = logs;
  return page;
}

/** The page's record of what the application received (see TEST_PAGE). */
export function appState(page) {
  return page.evaluate(() => window.__app);
}

/** Waits until the application has seen `count` messages on `channel`; returns them. */
export async function waitForMessages(page, channel, count, ms = DEADLINE_MS) {
  await page.waitForFunction(
    ([ch, n]) => window.__app && window.__app.received[ch] && window.__app.received[ch].length >= n,
    [channel, count],
    { timeout: ms, polling: 20 },
  );
  return page.evaluate((ch) => window.__app.received[ch], channel);
}

/** Waits until the client uses `name`. */
export async function waitForTransport(page, name, ms = DEADLINE_MS) {
  await page.waitForFunction((n) => window.__client && window.__client.transport === n, name, {
    timeout: ms,
    polling: 20,
  });
}

/**
 * The rungs a page moved through, without a long poll that raced a stream at the start: on
 * a machine loaded past its cores a stream can outlast its head start, and long polling
 * then carries the first messages (race.test.mjs counts how often).
 */
export function rungs(transports) {
  return transports.length > 1 && transports[0] === 'longpoll' ? transports.slice(1) : transports;
}

/** Asserts that `received` is exactly the numbers first..last, each once, in order. */
export function contiguous(received) {
  const numbers = received.map((m) => m.n);
  for (let i = 1; i < numbers.length; i++) {
    if (numbers[i] !== numbers[i - 1] + 1) {
      return `message ${i} is n=${numbers[i]} after n=${numbers[i - 1]}`;
    }
  }
  return null;
}

// ----------------------------------------------------------------------------------------
// Timings

/** Records one scenario's timings; printed as a table and saved under target/. */
export function timings(file) {
  const rows = [];
  return {
    /** `firstMessage`: false when the test only starts publishing after the page connected. */
    add(scenario, state, extra = {}, firstMessage = true) {
      const row = {
        scenario,
        transport: state.transports[state.transports.length - 1] || null,
        'connected ms': state.firstTransportAt === null ? null : Math.round(state.firstTransportAt),
      };
      if (firstMessage) {
        row['first message ms'] = state.firstMessageAt === null ? null : Math.round(state.firstMessageAt);
      }
      rows.push({ ...row, ...extra });
    },
    print() {
      if (!rows.length) return;
      console.log(`\nTime from navigation start (${file}):`);
      console.table(rows);
      const dir = path.join(ROOT, 'target', 'browser-timings');
      mkdirSync(dir, { recursive: true });
      writeFileSync(path.join(dir, `${file}.json`), JSON.stringify(rows, null, 2) + '\n');
    },
  };
}
