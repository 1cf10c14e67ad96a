// One connection for all tabs of an origin: seven pages of one browser profile share one
// gateway connection (through a SharedWorker, or a leader tab when the SharedWorker is off,
// elected with a Web Lock or, without Web Locks, a lease in localStorage), each with its own
// subscriptions and handlers; closing the tab that holds the connection (or the first one,
// with a worker) mid-stream loses no message in the others. A lone tab connects on its own
// and moves to the worker's connection when a second tab comes (its WebSocket publishes in
// flight still acknowledged); of a burst of tabs only the first connects on its own.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  contiguous,
  eventually,
  launchBrowser,
  metricValue,
  mintToken,
  publish,
  sleep,
  ticker,
  WITHOUT,
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

for (const { share, role, remove = [], how = role } of [
  { share: true, role: 'worker' },
  { share: 'leader', role: 'leader', how: 'leader by Web Lock' },
  // Without Web Locks: the leader holds a lease in localStorage; the tabs talk over a
  // BroadcastChannel, or without one over `storage` events.
  { share: 'leader', role: 'leader', remove: ['locks'], how: 'leader by lease, BroadcastChannel' },
  { share: 'leader', role: 'leader', remove: ['locks', 'broadcastchannel'], how: 'leader by lease, storage events' },
]) {
  test(`${TABS} tabs share one sse connection (${how}); closing the ${role === 'leader' ? 'leader' : 'first'} tab loses nothing`, async () => {
    // No WebSocket on the gateway: every rung but it counts against the browser's six
    // connections per origin, which is what sharing is for.
    const gateway = await startGateway({ CASCADE_TRANSPORTS: 'sse,longpoll,poll' });
    const front = await startFront(gateway.port);
    const context = await browser.newContext();
    for (const feature of remove) await context.addInitScript(WITHOUT[feature]);
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

      if (remove.includes('locks')) {
        assert.equal(await pages[0].evaluate(() => typeof navigator.locks), 'undefined');
      }
      const leaderAt = role === 'leader' ? roles.indexOf('leader') : 0;
      let closedAt = null;
      for (let n = 1; n <= MESSAGES; n++) {
        await publish(gateway.url, 'feed', { n });
        if (n % 10 === 0) await publish(gateway.url, 'side', { n });
        if (n === MESSAGES / 2) {
          await pages[leaderAt].close();
          closedAt = Date.now();
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
      const handOverMs = Date.now() - closedAt;
      if (role === 'leader') {
        const newRoles = await Promise.all(open.map((p) => p.evaluate(() => window.__client.shareRole)));
        assert.equal(newRoles.filter((r) => r === 'leader').length, 1, newRoles.join());
      }
      // The closed leader's stream is gone: one connection again.
      await eventually('one connection after the hand-over', async () => (await connections(gateway)).all === 1);
      console.log(`${TABS} tabs (${how}): ${before.all} gateway connection before, 1 after closing a tab, ` +
        `every message in every tab ${handOverMs} ms after the close; requests ${JSON.stringify(front.counts.paths)}`);
    } finally {
      await context.close();
      await front.close();
      await gateway.stop();
    }
  });
}

test('a lone tab connects on its own, and moves to the worker\'s connection when a second tab comes', async () => {
  const gateway = await startGateway({ CASCADE_TRANSPORTS: 'sse,longpoll,poll' });
  const front = await startFront(gateway.port);
  const context = await browser.newContext();
  const tick = ticker(gateway.url, 'feed');
  try {
    const first = await context.newPage();
    await first.goto(testPageUrl(front.url, { channels: ['feed'] }));
    await waitForMessages(first, 'feed', 5);
    // Its own stream: no SharedWorker start-up before its first message.
    assert.equal(await first.evaluate(() => window.__client.shareRole), 'worker');
    assert.equal(await first.evaluate(() => window.__client.active.shared || false), false);
    assert.equal((await connections(gateway)).all, 1);
    const second = await context.newPage();
    await second.goto(testPageUrl(front.url, { channels: ['feed'] }));
    await waitForMessages(second, 'feed', 5);
    // Both on the worker's connection, the first tab's own let go.
    await first.waitForFunction(() => window.__client.active && window.__client.active.shared === true, null, { timeout: 20_000 });
    assert.equal(await second.evaluate(() => window.__client.active.shared), true);
    await eventually('one connection for both tabs', async () => (await connections(gateway)).all === 1);
    for (const page of [first, second]) {
      const count = (await page.evaluate(() => window.__app.received.feed.length)) + 20;
      const received = await waitForMessages(page, 'feed', count);
      assert.equal(contiguous(received), null, 'the move lost and repeated nothing');
      assert.deepEqual(await page.evaluate(() => window.__app.gaps), []);
      assert.deepEqual(await page.evaluate(() => window.__app.disconnects), []);
    }
    const firstAt = async (page) => Math.round(await page.evaluate(() => window.__app.firstMessageAt));
    console.log(`a lone tab, then two: first message ${await firstAt(first)} ms from navigation on its own ` +
      `connection, the second tab's ${await firstAt(second)} ms (the worker's connection opened for it); ` +
      `requests ${JSON.stringify(front.counts.paths)}`);
    assert.equal(front.counts.paths['/sse'], 2, 'the first tab\'s own stream and the worker\'s');
  } finally {
    await tick.stop();
    await context.close();
    await front.close();
    await gateway.stop();
  }
});

test('WebSocket publishes in flight when a lone tab moves to the worker\'s connection are all acknowledged, none repeated', async () => {
  const gateway = await startGateway({ CASCADE_LIMITS_PUBLISH_RATE_PER_SECOND: '100000', CASCADE_LIMITS_PUBLISH_BURST: '100000' });
  const front = await startFront(gateway.port);
  const context = await browser.newContext();
  const token = mintToken({ sub: 'tester', channels: 'feed', publish: 'feed' });
  const page = (p) => p.goto(testPageUrl(front.url, { channels: ['feed'], client: { token, timeouts: { publish: 5000 } } }));
  try {
    const first = await context.newPage();
    await page(first);
    await waitForTransport(first, 'websocket');
    assert.equal(await first.evaluate(() => window.__client.active.shared || false), false);
    // Every frame from the gateway 100 ms late (a far gateway): the publishes of the last
    // 100 ms before the move are still owed their acknowledgement when it comes.
    await first.evaluate(() => {
      const client = window.__client;
      const ws = client.active.ws;
      const onmessage = ws.onmessage;
      ws.onmessage = (event) => setTimeout(() => onmessage.call(ws, event), 100);
      const state = (window.__pub = { sent: 0, acks: [], errors: [], owedAtMove: null, after: 0 });
      const promote = client._promote;
      client._promote = function (rung) {
        if (rung.shared && state.owedAtMove === null) state.owedAtMove = Object.keys(client.pending).length;
        return promote.call(this, rung);
      };
      (function burst() {
        for (let i = 0; i < 5; i++) {
          state.sent += 1;
          client.publish('feed', { n: state.sent }, (err, position) => {
            if (err) state.errors.push(err.code);
            else state.acks.push(position.offset);
          });
        }
        if (state.owedAtMove === null || state.after++ < 10) setTimeout(burst, 10);
      })();
    });
    const second = await context.newPage();
    await page(second);
    await first.waitForFunction(() => window.__pub.owedAtMove !== null && window.__pub.after > 10, null, { timeout: 20_000 });
    await first.waitForFunction(() => window.__pub.acks.length + window.__pub.errors.length === window.__pub.sent, null, { timeout: 20_000 });
    const state = await first.evaluate(() => window.__pub);
    console.log(`a lone tab moving to the worker with ${state.owedAtMove} WebSocket publishes owed: ` +
      `${state.acks.length} of ${state.sent} acknowledged, errors ${JSON.stringify(state.errors)}`);
    assert.ok(state.owedAtMove > 0, 'publishes were in flight at the move');
    assert.deepEqual(state.errors, []);
    assert.deepEqual([...state.acks].sort((a, b) => a - b), Array.from({ length: state.sent }, (_, i) => i + 1));
    // The channel holds each publish once: the next one lands right after them.
    assert.equal((await publish(gateway.url, 'feed', { n: 0 })).offset, state.sent + 1);
  } finally {
    await context.close();
    await front.close();
    await gateway.stop();
  }
});

test(`${TABS} tabs opened at once converge on one connection, and the burst opens at most two streams`, async () => {
  // The first tab connects on its own at once; the others, seeing it start, wait on the
  // worker's connection instead of each opening a stream of their own.
  const gateway = await startGateway({ CASCADE_TRANSPORTS: 'sse,longpoll,poll' });
  const front = await startFront(gateway.port);
  const context = await browser.newContext();
  const tick = ticker(gateway.url, 'feed');
  try {
    const pages = await Promise.all(Array.from({ length: TABS }, () => context.newPage()));
    const openedAt = Date.now();
    await Promise.all(pages.map((page) => page.goto(testPageUrl(front.url, { channels: ['feed'] }))));
    for (const page of pages) await waitForMessages(page, 'feed', 5);
    const allMs = Date.now() - openedAt;
    await eventually(`one connection for ${TABS} tabs`, async () => (await connections(gateway)).all === 1);
    for (const page of pages) {
      await page.waitForFunction(() => window.__client.active && window.__client.active.shared === true, null, { timeout: 20_000 });
      const count = (await page.evaluate(() => window.__app.received.feed.length)) + 5;
      const received = await waitForMessages(page, 'feed', count);
      assert.equal(contiguous(received), null, 'each message once, in order');
    }
    const streams = front.counts.paths['/sse'] || 0;
    console.log(`${TABS} tabs opened at once: ${streams} SSE requests, ${front.counts.paths['/longpoll'] || 0} long polls, ` +
      `every tab's first 5 messages within ${allMs} ms; requests ${JSON.stringify(front.counts.paths)}`);
    assert.ok(streams <= 2, `${streams} SSE requests for a burst of ${TABS} tabs`);
    assert.equal((await connections(gateway)).all, 1);
  } finally {
    await tick.stop();
    await context.close();
    await front.close();
    await gateway.stop();
  }
});

test('without Web Locks, a leader asleep past its lease is replaced, and steps down when it wakes', async () => {
  // A background tab's timers can sleep past the lease (Chromium throttles and freezes such
  // tabs); the debugger's pause stops the leader's page the same way, headless.
  const gateway = await startGateway({ CASCADE_TRANSPORTS: 'sse,longpoll,poll' });
  const front = await startFront(gateway.port);
  const context = await browser.newContext();
  await context.addInitScript(WITHOUT.locks);
  try {
    const pages = [];
    for (let i = 0; i < 3; i++) {
      const page = await context.newPage();
      await page.goto(testPageUrl(front.url, { channels: ['feed'], client: { share: 'leader' } }));
      await waitForTransport(page, 'sse');
      pages.push(page);
    }
    const roles = await Promise.all(pages.map((p) => p.evaluate(() => window.__client.shareRole)));
    const leader = pages[roles.indexOf('leader')];
    assert.ok(leader, roles.join());
    const others = pages.filter((p) => p !== leader);
    await eventually('one connection', async () => (await connections(gateway)).all === 1);
    for (let n = 1; n <= 10; n++) await publish(gateway.url, 'feed', { n });
    for (const page of pages) await waitForMessages(page, 'feed', 10);
    const cdp = await context.newCDPSession(leader);
    await cdp.send('Debugger.enable');
    await cdp.send('Debugger.pause');
    const pausedAt = Date.now();
    for (let n = 11; n <= 40; n++) {
      await publish(gateway.url, 'feed', { n });
      await sleep(20);
    }
    // The lease lapses (5 s), another tab leads, and reads from its own position.
    for (const page of others) await waitForMessages(page, 'feed', 40);
    const replacedMs = Date.now() - pausedAt;
    const newRoles = await Promise.all(others.map((p) => p.evaluate(() => window.__client.shareRole)));
    assert.equal(newRoles.filter((r) => r === 'leader').length, 1, newRoles.join());
    await cdp.send('Debugger.resume');
    // Awake, the old leader finds the lease taken, lets its connection go and follows.
    await leader.waitForFunction(() => window.__client.shareRole === 'follower', null, { timeout: 20_000 });
    for (let n = 41; n <= 50; n++) await publish(gateway.url, 'feed', { n });
    for (const page of pages) {
      await waitForMessages(page, 'feed', 50);
      await sleep(100);
      const received = await page.evaluate(() => window.__app.received.feed);
      assert.deepEqual(received.map((m) => m.n), Array.from({ length: 50 }, (_, i) => i + 1));
    }
    await eventually('one connection after the old leader stepped down', async () => (await connections(gateway)).all === 1);
    console.log(`lease: a sleeping leader replaced ${replacedMs} ms after it fell asleep; requests ${JSON.stringify(front.counts.paths)}`);
  } finally {
    await context.close();
    await front.close();
    await gateway.stop();
  }
});

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
    // A lone tab first connects on its own (role 'worker') and starts the worker only once
    // that works: the roles settle when the worker has failed for each tab.
    const roles = () => Promise.all(pages.map((p) => p.evaluate(() => window.__client.shareRole)));
    await eventually('a leader and a follower', async () => {
      const now = await roles();
      return [...now].sort().join() === 'follower,leader';
    });
    await eventually('one connection for both tabs', async () => (await connections(gateway)).all === 1);
    await publish(gateway.url, 'feed', { n: 1 });
    for (const page of pages) assert.deepEqual((await waitForMessages(page, 'feed', 1)).map((m) => m.n), [1]);
  } finally {
    await context.close();
    await front.close();
    await gateway.stop();
  }
});
