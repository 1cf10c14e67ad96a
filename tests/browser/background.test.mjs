// Background tabs: Chromium throttles their timers (aligned to one wake-up a minute after a
// while) and freezes them, so a timer can fire long after it was due, ahead of the network
// events that queued meanwhile. The client must not take that for a dead connection
// (socket.io#4040). Headless Chromium never hides a page, so the test does to the page
// what the browser does to a background tab: it freezes it (Page.setWebLifecycleState),
// thaws it, and moves its clock (playwright's clock) five minutes on, one throttled
// wake-up a minute, then publishes and expects the message on the same connection.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  appState,
  launchBrowser,
  openPage,
  publish,
  sleep,
  startFront,
  startGateway,
  testPageUrl,
  waitForMessages,
  waitForTransport,
} from './support.mjs';

/** Simulated idle time, as throttled wake-ups of a minute each. */
const IDLE_MINUTES = 5;

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

for (const transport of ['websocket', 'sse', 'longpoll']) {
  test(`a throttled background tab on ${transport} stays connected for ${IDLE_MINUTES} idle minutes`, async () => {
    const gateway = await startGateway();
    const front = await startFront(gateway.port);
    try {
      const page = await openPage(browser);
      // The page's timers and Date are the fake clock's from the first script on.
      await page.clock.install();
      await page.goto(testPageUrl(front.url, { channels: ['feed'], client: { transports: [transport], share: false } }));
      await waitForTransport(page, transport);
      await publish(gateway.url, 'feed', { n: 1 });
      await waitForMessages(page, 'feed', 1);

      const cdp = await page.context().newCDPSession(page);
      for (let minute = 0; minute < IDLE_MINUTES; minute++) {
        // Frozen, as a background tab is: nothing of the page runs, events queue.
        await cdp.send('Page.setWebLifecycleState', { state: 'frozen' });
        await sleep(300);
        await cdp.send('Page.setWebLifecycleState', { state: 'active' });
        // A throttled wake-up: a minute has passed, every timer due in it fires at once.
        await page.clock.fastForward('01:00');
      }
      await publish(gateway.url, 'feed', { n: 2 });
      const received = await waitForMessages(page, 'feed', 2);
      assert.deepEqual(received.map((m) => m.n), [1, 2]);
      const state = await appState(page);
      assert.deepEqual(state.disconnects, [], 'the connection was never declared dead');
      assert.equal(state.connects, 1);
      assert.deepEqual(state.transports, [transport]);
      assert.deepEqual(state.errors, []);
      await page.context().close();
    } finally {
      await front.close();
      await gateway.stop();
    }
  });
}
