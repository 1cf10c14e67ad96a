// Where the client lands on the ladder: the best rung the browser and the gateway share.
// Each page takes features away with an init script that runs before the client loads.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  appState,
  contiguous,
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

const table = timings('ladder');
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  table.print();
});

/**
 * Loads the test page behind a plain front proxy while a ticker publishes, and returns what
 * the application saw once it has five messages.
 */
async function land({ remove = [], gatewayEnv = {}, scenario }) {
  const gateway = await startGateway(gatewayEnv);
  const front = await startFront(gateway.port);
  const tick = ticker(gateway.url, 'feed');
  try {
    const page = await openPage(browser, remove);
    await page.goto(testPageUrl(front.url, { channels: ['feed'] }));
    const received = await waitForMessages(page, 'feed', 5);
    assert.equal(contiguous(received), null, 'messages arrive once each, in order');
    const state = await appState(page);
    table.add(scenario, state);
    const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
    await page.context().close();
    return { state, metrics };
  } finally {
    await tick.stop();
    await front.close();
    await gateway.stop();
  }
}

test('a default page lands on websocket', async () => {
  const { state } = await land({ scenario: '1 default' });
  assert.deepEqual(rungs(state.transports), ['websocket']);
  assert.deepEqual(state.errors, []);
});

test('without WebSocket the page lands on sse, and says why', async () => {
  const { state, metrics } = await land({ remove: ['websocket'], scenario: '2 no WebSocket' });
  assert.deepEqual(rungs(state.transports), ['sse']);
  assert.equal(
    metricValue(metrics, 'cascade_fallbacks_total', { from: 'websocket', to: 'sse', reason: 'unsupported' }),
    1,
    metrics,
  );
});

test('without WebSocket and EventSource the page lands on longpoll', async () => {
  const { state } = await land({ remove: ['websocket', 'eventsource'], scenario: '3a no WebSocket, no EventSource' });
  assert.deepEqual(state.transports, ['longpoll']);
});

test('with long polling disabled on the gateway too, the page lands on poll', async () => {
  const { state } = await land({
    remove: ['websocket', 'eventsource'],
    gatewayEnv: { CASCADE_TRANSPORTS: 'websocket,sse,poll', CASCADE_POLL_INTERVAL_MS: '250' },
    scenario: '3b ... and longpoll disabled',
  });
  assert.deepEqual(state.transports, ['poll']);
});

test('a forced transport is used even when better ones work', async () => {
  const gateway = await startGateway();
  const front = await startFront(gateway.port);
  try {
    const page = await openPage(browser);
    await page.goto(testPageUrl(front.url, { channels: ['feed'], client: { transports: ['longpoll'] } }));
    await waitForTransport(page, 'longpoll');
    assert.equal(front.counts.upgrades, 0, 'no WebSocket was attempted');
    await page.context().close();
  } finally {
    await front.close();
    await gateway.stop();
  }
});
