// The gateway over https to headless Chromium: pages load over HTTP/2, ten EventSource
// streams on one origin all receive every message (over HTTP/1.1 only six could be open),
// and the browser client lands on WebSocket over HTTP/2 (RFC 8441) on the page's
// connection.
//
// The certificate is made for the run: tests/browser.rs passes one it made with rcgen in
// CASCADE_TEST_TLS_CERT and CASCADE_TEST_TLS_KEY; run by hand, this file makes one with
// the openssl CLI. Chromium is told to ignore certificate errors (the certificate is
// self-signed), and this process's fetch to trust it.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { API_KEY, TEST_PAGE, eventually, launchBrowser, metricValue, publish, startGateway, waitForTransport } from './support.mjs';

// This process's fetch (the publisher, the metrics) trusts the run's self-signed cert.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';

let browser;
let cert;

/** The run's certificate: tests/browser.rs's, or one made with openssl. */
function certificate() {
  if (process.env.CASCADE_TEST_TLS_CERT && process.env.CASCADE_TEST_TLS_KEY) {
    return { cert: process.env.CASCADE_TEST_TLS_CERT, key: process.env.CASCADE_TEST_TLS_KEY, dir: null };
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'cascade-tls-'));
  const files = { cert: path.join(dir, 'cert.pem'), key: path.join(dir, 'key.pem'), dir };
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', files.key, '-out', files.cert, '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ], { stdio: 'ignore' });
  return files;
}

before(async () => {
  cert = certificate();
  browser = await launchBrowser({ args: ['--ignore-certificate-errors'] });
});

after(async () => {
  await browser?.close();
  if (cert?.dir) rmSync(cert.dir, { recursive: true, force: true });
});

function tlsGateway(env = {}) {
  return startGateway({ CASCADE_TLS_CERT_FILE: cert.cert, CASCADE_TLS_KEY_FILE: cert.key, ...env });
}

async function metrics(gateway) {
  return (await fetch(`${gateway.url}/metrics`)).text();
}

test('pages load over h2, and ten EventSource streams on one origin all receive every message', async () => {
  const gateway = await tlsGateway();
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  try {
    const page = await context.newPage();
    await page.goto(`${gateway.url}/healthz`);
    const navigation = await page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);
    assert.equal(navigation, 'h2');

    const STREAMS = 10;
    const MESSAGES = 20;
    await page.evaluate((streams) => {
      window.__streams = [];
      for (let i = 0; i < streams; i++) {
        const stream = { open: false, received: [] };
        const source = new EventSource('/sse?channels=feed');
        source.onopen = () => {
          stream.open = true;
        };
        source.onmessage = (event) => stream.received.push(JSON.parse(event.data).data.n);
        window.__streams.push(stream);
      }
    }, STREAMS);
    await eventually(`${STREAMS} streams open`, () => page.evaluate(() => window.__streams.every((s) => s.open)));
    for (let n = 1; n <= MESSAGES; n++) await publish(gateway.url, 'feed', { n });
    const expected = Array.from({ length: MESSAGES }, (_, i) => i + 1);
    await eventually(`every stream has all ${MESSAGES} messages`, () =>
      page.evaluate((m) => window.__streams.every((s) => s.received.length >= m), MESSAGES),
    );
    const received = await page.evaluate(() => window.__streams.map((s) => s.received));
    for (const got of received) assert.deepEqual(got, expected);

    // A resource fetched by the page rides the same HTTP/2 connection.
    await page.evaluate(async () => (await fetch('/healthz?again')).text());
    const resource = await eventually('the fetch timed', () =>
      page.evaluate(() => performance.getEntriesByType('resource').find((e) => e.name.includes('/healthz?again'))?.nextHopProtocol),
    );
    assert.equal(resource, 'h2');

    const text = await metrics(gateway);
    assert.equal(metricValue(text, 'cascade_connections', { transport: 'sse' }), STREAMS, text);
    // One TLS connection from the browser carried all of them (the others are this
    // process's, which offers no ALPN).
    assert.equal(metricValue(text, 'cascade_tls_handshakes_total', { alpn: 'h2' }), 1, text);
  } finally {
    await context.close();
    await gateway.stop();
  }
});

test('the browser client lands on WebSocket over HTTP/2', async () => {
  const gateway = await tlsGateway();
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  try {
    const page = await context.newPage();
    const logs = [];
    page.on('console', (msg) => logs.push(`${msg.type()}: ${msg.text()}`));
    // The harness's test page, on the gateway's own origin: the client script is the
    // gateway's /cascade.js.
    await page.goto(`${gateway.url}/healthz#${encodeURIComponent(JSON.stringify({ channels: ['feed'] }))}`);
    // Everything from here on is the page's (this process's fetch offers only http/1.1,
    // and made the TLS connections its /healthz polls needed).
    const inPage = (script, arg) => page.evaluate(script, arg);
    const pageMetrics = () => inPage(() => fetch('/metrics').then((r) => r.text()));
    const http1Before = metricValue(await pageMetrics(), 'cascade_tls_handshakes_total', { alpn: 'http/1.1' });
    await page.setContent(TEST_PAGE);
    await waitForTransport(page, 'websocket');
    for (let n = 1; n <= 5; n++) {
      await inPage(
        ([key, n]) =>
          fetch('/publish', {
            method: 'POST',
            headers: { 'content-type': 'application/json', 'x-cascade-api-key': key },
            body: JSON.stringify({ channel: 'feed', data: { n } }),
          }).then((r) => r.status),
        [API_KEY, n],
      );
    }
    await eventually('5 messages over the websocket', () =>
      page.evaluate(() => (window.__app.received.feed || []).length >= 5),
    );
    const received = await page.evaluate(() => window.__app.received.feed.map((m) => [m.n, m.via]));
    assert.deepEqual(received, [1, 2, 3, 4, 5].map((n) => [n, 'websocket']), logs.join('\n'));

    const text = await pageMetrics();
    assert.equal(metricValue(text, 'cascade_connections', { transport: 'websocket' }), 1, text);
    // The WebSocket is a stream of the page's HTTP/2 connection: the browser made one
    // connection, and no HTTP/1.1 one.
    assert.equal(metricValue(text, 'cascade_tls_handshakes_total', { alpn: 'h2' }), 1, text);
    assert.equal(metricValue(text, 'cascade_tls_handshakes_total', { alpn: 'http/1.1' }), http1Before, text);
  } finally {
    await context.close();
    await gateway.stop();
  }
});
