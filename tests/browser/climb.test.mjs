// Climbing back: after a fallback, the client probes the better rungs now and then and moves
// up when one works, with nothing lost or repeated in what the application sees.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  appState,
  contiguous,
  launchBrowser,
  openPage,
  publish,
  rungs,
  sleep,
  startFront,
  startGateway,
  testPageUrl,
  timings,
  waitForMessages,
  waitForTransport,
} from './support.mjs';

/** Messages published after the climb, to show the new rung carries on from the old. */
const AFTER_CLIMB = 100;

const table = timings('climb');
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  table.print();
});

for (const { fallback, blocked } of [
  { fallback: 'sse', blocked: { websocket: 'refuse' } },
  { fallback: 'longpoll', blocked: { websocket: 'refuse', bufferSse: true } },
]) {
  test(`from ${fallback} back up to websocket once upgrades pass, nothing lost`, async () => {
    const gateway = await startGateway();
    const front = await startFront(gateway.port, blocked);
    try {
      const page = await openPage(browser);
      await page.goto(testPageUrl(front.url, { channels: ['feed'], client: { probeIntervalMs: 300 } }));
      await waitForTransport(page, fallback);
      const loadedAt = Date.now();
      let allowedAt = null;
      let climbedMs = null;
      let climbedAt = null;
      // Publishes go on until well after the climb, so both rungs carry part of the run.
      let total = 0;
      const deadline = Date.now() + 30_000;
      while (climbedAt === null || total < climbedAt + AFTER_CLIMB) {
        assert.ok(Date.now() < deadline, 'the client climbed back within 30 s');
        total += 1;
        await publish(gateway.url, 'feed', { n: total });
        if (total === 60) {
          // The network stops blocking WebSockets (SSE stays buffered in the second case).
          front.mode.websocket = 'pass';
          allowedAt = Date.now();
        }
        if (climbedAt === null && allowedAt !== null) {
          if ((await page.evaluate(() => window.__client.transport)) === 'websocket') {
            climbedAt = total;
            climbedMs = Date.now() - allowedAt;
          }
        }
        await sleep(5);
      }
      await waitForMessages(page, 'feed', total);
      await sleep(200); // nothing more may arrive
      const state = await appState(page);
      const all = state.received.feed;
      assert.equal(all.length, total, 'no duplicates');
      assert.equal(all[0].n, 1);
      assert.equal(contiguous(all), null);
      assert.deepEqual(fallback === 'longpoll' ? state.transports : rungs(state.transports), [fallback, 'websocket']);
      const via = new Set(all.map((m) => m.via));
      assert.ok(via.has(fallback) && via.has('websocket'), [...via].join());
      assert.deepEqual(state.gaps, []);
      assert.ok(Date.now() - loadedAt < 30_000);
      table.add(`6 climb ${fallback} -> websocket`, state, {
        'climbed after allowed ms': climbedMs,
        [`via ${fallback}`]: all.filter((m) => m.via === fallback).length,
        'via websocket': all.filter((m) => m.via === 'websocket').length,
      }, false);
      await page.context().close();
    } finally {
      await front.close();
      await gateway.stop();
    }
  });
}
