// One connection for all tabs of an origin: seven pages of one browser profile share one
// gateway connection (through a SharedWorker, or a leader tab when the SharedWorker is off),
// each with its own subscriptions and handlers; closing the tab that holds the connection
// (or the first one, with a worker) mid-stream loses no message in the others.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  contiguous,
  eventually,
  launchBrowser,
  metricValue,
  publish,
  sleep,
  startFront,
  startGateway,
  testPageUrl,
  waitForMessages,
  waitForTransport,
} from './support.mjs';

const TABS = 7;
/** Messages published in all; the tab holding the connection closes halfway. */
const MESSAGES = 120;

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

async function connections(gateway) {
  const text = await (await fetch(`${gateway.url}/metrics`)).text();
  return {
    sse: metricValue(text, 'cascade_connections', { transport: 'sse' }),
    all: metricValue(text, 'cascade_connections'),
    text,
  };
}

for (const { share, role } of [
  { share: true, role: 'worker' },
  { share: 'leader', role: 'leader' },
]) {
  test(`${TABS} tabs share one sse connection (${role}); closing the ${role === 'leader' ? 'leader' : 'first'} tab loses nothing`, async () => {
    // No WebSocket on the gateway: every rung but it counts against the browser's six
    // connections per origin, which is what sharing is for.
    const gateway = await startGateway({ CASCADE_TRANSPORTS: 'sse,longpoll,poll' });
    const front = await startFront(gateway.port);
    const context = await browser.newContext();
    try {
      const pages = [];
      for (let i = 0; i < TABS; i++) {
        const page = await context.newPage();
        const logs = [];
        page.on('console', (msg) => logs.push(`${msg.type()}: ${msg.text()}`));
        page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
        page.logs = logs;
        // Each tab its own channels: all follow `feed`, every other one `side` too.
        const channels = i % 2 === 0 ? ['feed', 'side'] : ['feed'];
        await page.goto(testPageUrl(front.url, { channels, client: { share } }));
        pages.push(page);
      }
      for (const page of pages) await waitForTransport(page, 'sse');
      const roles = await Promise.all(pages.map((p) => p.evaluate(() => window.__client.shareRole)));
      if (role === 'worker') {
        assert.deepEqual(roles, Array(TABS).fill('worker'));
      } else {
        assert.equal(roles.filter((r) => r === 'leader').length, 1, roles.join());
        assert.equal(roles.filter((r) => r === 'follower').length, TABS - 1, roles.join());
      }
      // A long poll that raced the stream (a slow machine) may take a moment to be let go.
      await eventually(`one connection for ${TABS} tabs`, async () => (await connections(gateway)).all === 1);
      const before = await connections(gateway);
      assert.equal(before.sse, 1, before.text);

      const leaderAt = role === 'leader' ? roles.indexOf('leader') : 0;
      for (let n = 1; n <= MESSAGES; n++) {
        await publish(gateway.url, 'feed', { n });
        if (n % 10 === 0) await publish(gateway.url, 'side', { n });
        if (n === MESSAGES / 2) {
          await pages[leaderAt].close();
        }
        await sleep(5);
      }
      const open = pages.filter((_, i) => i !== leaderAt);
      for (const page of open) {
        const feed = await waitForMessages(page, 'feed', MESSAGES);
        await sleep(100); // nothing more may arrive
        const state = await page.evaluate(() => window.__app);
        assert.equal(state.received.feed.length, MESSAGES, `no duplicates; logs: ${page.logs.join('\n')}`);
        assert.equal(feed[0].n, 1);
        assert.equal(contiguous(state.received.feed), null);
        assert.deepEqual(state.gaps, []);
        const side = state.received.side;
        if (side) {
          assert.deepEqual(side.map((m) => m.n), [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]);
        }
      }
      if (role === 'leader') {
        const newRoles = await Promise.all(open.map((p) => p.evaluate(() => window.__client.shareRole)));
        assert.equal(newRoles.filter((r) => r === 'leader').length, 1, newRoles.join());
      }
      // The closed leader's stream is gone: one connection again.
      await eventually('one connection after the hand-over', async () => (await connections(gateway)).all === 1);
      console.log(`${TABS} tabs (${role}): ${before.all} gateway connection before, 1 after closing a tab; requests ${JSON.stringify(front.counts.paths)}`);
    } finally {
      await context.close();
      await front.close();
      await gateway.stop();
    }
  });
}

test('share: false keeps one connection per tab', async () => {
  const gateway = await startGateway({ CASCADE_TRANSPORTS: 'sse,longpoll,poll' });
  const front = await startFront(gateway.port);
  const context = await browser.newContext();
  try {
    const pages = [];
    for (let i = 0; i < 3; i++) {
      const page = await context.newPage();
      await page.goto(testPageUrl(front.url, { channels: ['feed'], client: { share: false } }));
      pages.push(page);
    }
    for (const page of pages) await waitForTransport(page, 'sse');
    assert.equal((await connections(gateway)).sse, 3);
    await publish(gateway.url, 'feed', { n: 1 });
    for (const page of pages) await waitForMessages(page, 'feed', 1);
    assert.equal(await pages[0].evaluate(() => window.__client.shareRole), null);
  } finally {
    await context.close();
    await front.close();
    await gateway.stop();
  }
});

test('a tab behind the new leader reads what it missed from /poll before taking forwarded messages', async () => {
  const gateway = await startGateway({ CASCADE_TRANSPORTS: 'sse,longpoll,poll' });
  const front = await startFront(gateway.port);
  const context = await browser.newContext();
  try {
    const pages = [];
    for (let i = 0; i < 3; i++) {
      const page = await context.newPage();
      await page.goto(testPageUrl(front.url, { channels: ['feed'], client: { share: 'leader' } }));
      await waitForTransport(page, 'sse');
      pages.push(page);
    }
    const [leader, heir, late] = pages;
    assert.equal(await leader.evaluate(() => window.__client.shareRole), 'leader');
    for (let n = 1; n <= 4; n++) await publish(gateway.url, 'feed', { n });
    for (const page of pages) await waitForMessages(page, 'feed', 4);
    // The third tab misses what the leader forwards next, as a tab does when its leader
    // goes with messages still on their way to it.
    await late.evaluate(() => {
      const rung = window.__client.active;
      const receive = rung.receive;
      rung.receive = function (msg) {
        if (window.__deaf && msg.op === 'message') return undefined;
        return receive.call(this, msg);
      };
      window.__deaf = true;
    });
    for (let n = 5; n <= 10; n++) await publish(gateway.url, 'feed', { n });
    await waitForMessages(heir, 'feed', 10);
    await late.evaluate(() => {
      window.__deaf = false;
    });
    const polls = front.counts.paths['/poll'] || 0;
    await leader.close();
    await heir.waitForFunction(() => window.__client.shareRole === 'leader', null, { timeout: 20_000 });
    for (let n = 11; n <= 20; n++) await publish(gateway.url, 'feed', { n });
    const received = await waitForMessages(late, 'feed', 20);
    await sleep(100);
    const all = (await late.evaluate(() => window.__app.received.feed)).map((m) => m.n);
    assert.deepEqual(all, Array.from({ length: 20 }, (_, i) => i + 1));
    assert.equal(contiguous(received), null);
    assert.ok((front.counts.paths['/poll'] || 0) > polls, 'the missed messages came from /poll');
  } finally {
    await context.close();
    await front.close();
    await gateway.stop();
  }
});

test('a SharedWorker whose script does not load gives way to a leader tab', async () => {
  const gateway = await startGateway({ CASCADE_TRANSPORTS: 'sse,longpoll,poll' });
  const front = await startFront(gateway.port);
  const context = await browser.newContext();
  try {
    const pages = [];
    for (let i = 0; i < 2; i++) {
      const page = await context.newPage();
      // The gateway answers 404 there: the worker fails to start.
      await page.goto(testPageUrl(front.url, { channels: ['feed'], client: { workerUrl: '/missing/cascade.js' } }));
      pages.push(page);
    }
    for (const page of pages) await waitForTransport(page, 'sse');
    const roles = await Promise.all(pages.map((p) => p.evaluate(() => window.__client.shareRole)));
    assert.deepEqual([...roles].sort(), ['follower', 'leader']);
    await eventually('one connection for both tabs', async () => (await connections(gateway)).all === 1);
    await publish(gateway.url, 'feed', { n: 1 });
    for (const page of pages) assert.deepEqual((await waitForMessages(page, 'feed', 1)).map((m) => m.n), [1]);
  } finally {
    await context.close();
    await front.close();
    await gateway.stop();
  }
});
