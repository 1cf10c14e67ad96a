// A refused channel on every rung: the gateway serves the channels a page may read and
// names the ones it may not; the client drops those with an `error` naming the channel
// and the code, the others keep flowing, and no rung is blamed or left for it.
//
// Each rung is reached the way a browser reaches it (features taken away, long polling
// disabled on the gateway), not forced with `transports`, so that a step down would show.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  appState,
  contiguous,
  launchBrowser,
  metricValue,
  mintToken,
  openPage,
  rungs,
  startFront,
  startGateway,
  testPageUrl,
  ticker,
  waitForMessages,
  waitForTransport,
} from './support.mjs';

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** How each rung is reached: what the page lacks, and what the gateway offers. */
const RUNGS = {
  websocket: { remove: [], env: {} },
  sse: { remove: ['websocket'], env: {} },
  longpoll: { remove: ['websocket', 'eventsource'], env: {} },
  poll: {
    remove: ['websocket', 'eventsource'],
    env: { CASCADE_TRANSPORTS: 'websocket,sse,poll', CASCADE_POLL_INTERVAL_MS: '200' },
  },
};

/** Runs `scenario(page, gateway)` on a page of alice's (the gateway's built-in rules). */
async function asAlice(rung, channels, scenario) {
  const gateway = await startGateway(RUNGS[rung].env);
  const front = await startFront(gateway.port);
  try {
    const page = await openPage(browser, RUNGS[rung].remove);
    const token = mintToken({ sub: 'alice' });
    await page.goto(testPageUrl(front.url, { channels, client: { token } }));
    await waitForTransport(page, rung);
    await scenario(page, gateway);
    const state = await appState(page);
    assert.deepEqual(rungs(state.transports), [rung], 'the rung never changed');
    assert.deepEqual(state.disconnects, [], 'no disconnect');
    // Rungs the page lacks are reported as `unsupported` on the way down; nothing else is.
    const blamed = front.counts.failed.flatMap((list) => list.split(',')).filter((f) => !f.endsWith(':unsupported'));
    assert.deepEqual(blamed, [], 'no rung reported failed');
    const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
    const fallbacks =
      metricValue(metrics, 'cascade_fallbacks_total') -
      metricValue(metrics, 'cascade_fallbacks_total', { reason: 'unsupported' });
    assert.equal(fallbacks, 0, 'no fallback counted but the unsupported ones');
    assert.ok(metricValue(metrics, 'cascade_errors_total', { code: 'forbidden' }) >= 1, 'the refusal is counted');
    await page.context().close();
  } finally {
    await front.close();
    await gateway.stop();
  }
}

/** Subscribes the page to `channel`, recording its messages as the test page does. */
function subscribe(page, channel) {
  return page.evaluate((ch) => {
    window.__app.received[ch] = [];
    window.__client.subscribe(ch, (data, message) => {
      window.__app.received[ch].push({ n: data && data.n, epoch: message.epoch, offset: message.offset });
    });
  }, channel);
}

/** Waits until the application was told that `channel` was refused with `code`. */
async function refusedWith(page, channel, code) {
  try {
    await page.waitForFunction(
      ([ch, c]) => window.__app.refused.some((r) => r.channel === ch && r.code === c),
      [channel, code],
      { timeout: 10_000, polling: 20 },
    );
  } catch (err) {
    // What the application saw instead, and whether the client still has the channel.
    const { errors, transports, disconnects } = await appState(page);
    const seen = { errors, transports, disconnects, channels: await page.evaluate(() => window.__client._channels()) };
    throw new Error(`no error naming ${channel} (${code}): ${JSON.stringify(seen)}`);
  }
  const channels = await page.evaluate(() => window.__client._channels());
  assert.ok(!channels.includes(channel), `${channel} is dropped from the client's set: ${channels}`);
}

for (const rung of Object.keys(RUNGS)) {
  test(`on ${rung}: a forbidden channel is refused alone, and chat keeps flowing`, async () => {
    await asAlice(rung, ['chat'], async (page, gateway) => {
      const tick = ticker(gateway.url, 'chat', 50);
      try {
        await waitForMessages(page, 'chat', 3);
        await subscribe(page, 'user:bob');
        await refusedWith(page, 'user:bob', 'forbidden');
        const atRefusal = await page.evaluate(() => window.__app.received.chat.length);
        const received = await waitForMessages(page, 'chat', atRefusal + 5);
        assert.equal(contiguous(received), null, 'chat arrives once each, in order');
      } finally {
        await tick.stop();
      }
      const state = await appState(page);
      assert.deepEqual(state.refused, [{ channel: 'user:bob', code: 'forbidden' }]);
      assert.deepEqual(state.errors, ['forbidden'], 'one error, for the channel');
      assert.deepEqual(await page.evaluate(() => window.__app.received['user:bob']), []);
    });
  });

  test(`on ${rung}: a page whose only channel is refused stays on its rung and subscribes later`, async () => {
    await asAlice(rung, ['user:bob'], async (page, gateway) => {
      await refusedWith(page, 'user:bob', 'forbidden');
      await subscribe(page, 'chat');
      const tick = ticker(gateway.url, 'chat', 50);
      try {
        const received = await waitForMessages(page, 'chat', 5);
        assert.equal(contiguous(received), null);
      } finally {
        await tick.stop();
      }
      const state = await appState(page);
      assert.deepEqual(state.refused, [{ channel: 'user:bob', code: 'forbidden' }]);
      assert.deepEqual(state.errors, ['forbidden']);
    });
  });
}
