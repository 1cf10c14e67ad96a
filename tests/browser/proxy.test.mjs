// Networks that accept a rung but break it: a proxy that buffers responses (SSE opens but
// nothing arrives) and one that completes a WebSocket handshake and then passes nothing.
// The client must notice within its deadlines, fall, and report why on /negotiate.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  appState,
  contiguous,
  eventually,
  launchBrowser,
  metricValue,
  openPage,
  rungs,
  startFront,
  startGateway,
  testPageUrl,
  ticker,
  timings,
  waitForMessages,
  waitForTransport,
} from './support.mjs';

const table = timings('proxy');
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  table.print();
});

/** Waits until /metrics counts a fallback with these labels; returns the whole text. */
async function fallbackCounted(gateway, labels) {
  let text = '';
  await eventually(`cascade_fallbacks_total ${JSON.stringify(labels)}`, async () => {
    text = await (await fetch(`${gateway.url}/metrics`)).text();
    return metricValue(text, 'cascade_fallbacks_total', labels) >= 1;
  });
  return text;
}

test('behind a buffering proxy that refuses upgrades, the client detects it and lands on longpoll', async () => {
  const gateway = await startGateway();
  const front = await startFront(gateway.port, { bufferSse: true, websocket: 'refuse' });
  const tick = ticker(gateway.url, 'feed');
  try {
    const page = await openPage(browser);
    await page.goto(testPageUrl(front.url, { channels: ['feed'] }));
    const received = await waitForMessages(page, 'feed', 5);
    assert.equal(contiguous(received), null);
    const state = await appState(page);
    assert.deepEqual(state.transports, ['longpoll']);
    assert.ok(front.counts.upgrades >= 1, 'a WebSocket was attempted');
    assert.ok(front.counts.sse >= 1, 'an event stream was attempted');
    const metrics = await fallbackCounted(gateway, { from: 'sse', to: 'longpoll', reason: 'buffered' });
    assert.equal(metricValue(metrics, 'cascade_fallbacks_total', { from: 'sse', reason: 'buffered' }), 1, metrics);
    assert.equal(metricValue(metrics, 'cascade_fallbacks_total', { from: 'websocket', reason: 'refused' }), 1, metrics);
    table.add('4 buffering proxy, upgrades refused', state);
    await page.context().close();
  } finally {
    await tick.stop();
    await front.close();
    await gateway.stop();
  }
});

test('a WebSocket accepted but dead is caught by the subscribed deadline; the client lands on sse', async () => {
  // Long polling carries the messages meanwhile (the race), and SSE takes over from it.
  const gateway = await startGateway();
  const front = await startFront(gateway.port, { websocket: 'dead' });
  const tick = ticker(gateway.url, 'feed');
  try {
    const page = await openPage(browser);
    await page.goto(testPageUrl(front.url, { channels: ['feed'] }));
    await waitForTransport(page, 'sse');
    const sofar = (await appState(page)).received.feed.length;
    const received = await waitForMessages(page, 'feed', sofar + 5);
    assert.equal(contiguous(received), null);
    const state = await appState(page);
    assert.deepEqual(state.transports, ['longpoll', 'sse']);
    const metrics = await fallbackCounted(gateway, { from: 'websocket', to: 'sse', reason: 'timeout' });
    assert.equal(metricValue(metrics, 'cascade_fallbacks_total'), 1, metrics);
    table.add('4b WebSocket handshake then silence', state);
    await page.context().close();
  } finally {
    await tick.stop();
    await front.close();
    await gateway.stop();
  }
});

test('a reload starts at the rung that last worked instead of retrying the one that failed', async () => {
  const gateway = await startGateway();
  const front = await startFront(gateway.port, { websocket: 'refuse' });
  const tick = ticker(gateway.url, 'feed');
  try {
    const page = await openPage(browser);
    await page.goto(testPageUrl(front.url, { channels: ['feed'] }));
    await waitForMessages(page, 'feed', 1);
    assert.deepEqual(rungs((await appState(page)).transports), ['sse']);
    const upgrades = front.counts.upgrades;
    assert.equal(upgrades, 1);
    // Same tab, same sessionStorage.
    await page.reload();
    await waitForMessages(page, 'feed', 3);
    const state = await appState(page);
    assert.deepEqual(state.transports, ['sse']);
    assert.equal(front.counts.upgrades, upgrades, 'no WebSocket was tried before sse worked');
    table.add('reload, sse remembered', state);
    await page.context().close();
  } finally {
    await tick.stop();
    await front.close();
    await gateway.stop();
  }
});
