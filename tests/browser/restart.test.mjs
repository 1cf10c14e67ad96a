// The gateway restarts mid-stream. The engine is in memory, so the new process starts a new
// epoch and the client is told of a gap in the old one; the application must still see
// each of the 200 messages exactly once, in order.
//
// Messages are only published while a gateway is up, and one whose publish fails while it
// is down is retried after the restart. The restart waits until the page has everything
// acknowledged so far: an in-memory engine loses a message acknowledged but not yet
// delivered when its process ends, which is the multi-node (Redis) tests' subject, not this.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  appState,
  contiguous,
  launchBrowser,
  openPage,
  publish,
  rungs,
  publishRetrying,
  sleep,
  startFront,
  startGateway,
  testPageUrl,
  timings,
  waitForMessages,
  waitForTransport,
} from './support.mjs';

const TOTAL = 200;
const RESTART_AFTER = 100;

const table = timings('restart');
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  table.print();
});

for (const [transport, remove] of [
  ['websocket', []],
  ['sse', ['websocket']],
  ['longpoll', ['websocket', 'eventsource']],
]) {
  test(`a restart mid-stream on ${transport}: every message exactly once, in order`, async () => {
    let gateway = await startGateway();
    const { port } = gateway;
    // The page's origin stays up while the gateway behind it restarts.
    const front = await startFront(port);
    try {
      const page = await openPage(browser, remove);
      await page.goto(testPageUrl(front.url, { channels: ['feed'] }));
      await waitForTransport(page, transport);
      let failedPublishes = 0;
      let outageMs = null;
      for (let n = 1; n <= TOTAL; n++) {
        if (n === RESTART_AFTER + 1) {
          await waitForMessages(page, 'feed', RESTART_AFTER);
          const stoppedAt = Date.now();
          await gateway.stop('SIGTERM');
          // Publishing goes on (and fails) until the new process is up.
          const restarted = sleep(200).then(() => startGateway({}, port));
          const giveUp = Date.now() + 15_000;
          for (;;) {
            try {
              await publish(gateway.url, 'feed', { n });
              break;
            } catch (err) {
              failedPublishes += 1;
              if (Date.now() > giveUp) throw new Error(`publish after restart kept failing: ${err.message}`);
              await sleep(25);
            }
          }
          gateway = await restarted;
          await waitForMessages(page, 'feed', RESTART_AFTER + 1);
          outageMs = Date.now() - stoppedAt;
          continue;
        }
        await publishRetrying(gateway.url, 'feed', { n });
        if (n % 10 === 0) await sleep(5);
      }
      const received = await waitForMessages(page, 'feed', TOTAL);
      await sleep(200); // nothing more may arrive
      const state = await appState(page);
      const all = state.received.feed;
      assert.equal(all.length, TOTAL, 'no duplicates');
      assert.equal(all[0].n, 1);
      assert.equal(contiguous(all), null);
      assert.equal(received[TOTAL - 1].n, TOTAL);
      const epochs = [...new Set(all.map((m) => m.epoch))];
      assert.equal(epochs.length, 2, 'the restart started a new epoch');
      const gap = state.gaps.find((g) => g.channel === 'feed');
      assert.ok(gap, 'the application was told about the gap');
      assert.equal(gap.epoch, epochs[1]);
      assert.ok(failedPublishes > 0, 'some publishes failed while the gateway was down');
      assert.ok(rungs(state.transports).every((t) => t === transport), state.transports.join());
      table.add(`5 restart on ${transport}`, state, {
        'outage to resume ms': outageMs,
        'gap events': state.gaps.length,
        'failed publishes': failedPublishes,
      }, false);
      await page.context().close();
    } finally {
      await front.close();
      await gateway.stop();
    }
  });
}
