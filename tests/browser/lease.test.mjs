// Tabs that share a connection through a leader tab without Web Locks (a lease in
// localStorage, tabs talking over a BroadcastChannel): no lock tells the leader that a tab
// went, or a follower that the leader still lives. A follower that goes without a word
// must not keep its channels on the leader's connection, and a leader whose timers a
// background tab's throttling slows to a crawl must keep its lease.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  WITHOUT,
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

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

async function metrics(gateway) {
  const text = await (await fetch(`${gateway.url}/metrics`, { signal: AbortSignal.timeout(3000) })).text();
  return {
    connections: metricValue(text, 'cascade_connections'),
    channels: metricValue(text, 'cascade_active_channels'),
  };
}

/** Three tabs without Web Locks, the first one the leader; `channels[i]` for tab i. */
async function leaseTabs(context, front, channels) {
  const pages = [];
  for (const list of channels) {
    const page = await context.newPage();
    await page.goto(testPageUrl(front.url, { channels: list, client: { share: 'leader' } }));
    await waitForTransport(page, 'sse');
    pages.push(page);
  }
  const roles = await Promise.all(pages.map((p) => p.evaluate(() => window.__client.shareRole)));
  assert.deepEqual(roles, ['leader', 'follower', 'follower']);
  assert.equal(await pages[0].evaluate(() => typeof navigator.locks), 'undefined');
  return pages;
}

test('without Web Locks, a follower frozen past the deadline is let go and joins again; a crashed one is let go', async () => {
  const gateway = await startGateway({ CASCADE_TRANSPORTS: 'sse,longpoll,poll' });
  const front = await startFront(gateway.port);
  const context = await browser.newContext();
  await context.addInitScript(WITHOUT.locks);
  try {
    // Only the third tab follows `solo`: the leader's connection follows it for that tab.
    const [, other, solo] = await leaseTabs(context, front, [['feed'], ['feed'], ['feed', 'solo']]);
    await eventually('one connection with both channels', async () => {
      const m = await metrics(gateway);
      return m.connections === 1 && m.channels === 2;
    });
    for (let n = 1; n <= 3; n++) await publish(gateway.url, 'solo', { n });
    await waitForMessages(solo, 'solo', 3);

    // Frozen (the debugger's pause stops the page as a frozen background tab is stopped):
    // silent, it is let go; awake, it joins again from where it stood.
    const cdp = await context.newCDPSession(solo);
    await cdp.send('Debugger.enable');
    await cdp.send('Debugger.pause');
    const frozenAt = Date.now();
    await eventually('the frozen tab\'s channel let go', async () => (await metrics(gateway)).channels === 1);
    const letGoMs = Date.now() - frozenAt;
    for (let n = 4; n <= 6; n++) await publish(gateway.url, 'solo', { n });
    await cdp.send('Debugger.resume');
    await eventually('the channel followed again', async () => (await metrics(gateway)).channels === 2);
    for (let n = 7; n <= 8; n++) await publish(gateway.url, 'solo', { n });
    const received = await waitForMessages(solo, 'solo', 8);
    await sleep(100);
    assert.deepEqual((await solo.evaluate(() => window.__app.received.solo)).map((m) => m.n), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.equal(contiguous(received), null);
    assert.equal(await solo.evaluate(() => window.__client.shareRole), 'follower');

    // Crashed: no pagehide, no goodbye.
    const crashedAt = Date.now();
    const crashed = new Promise((resolve) => solo.once('crash', resolve));
    cdp.send('Page.crash').catch(() => {}); // answered by no one: the page is gone
    await crashed;
    await eventually('the crashed tab\'s channel let go', async () => (await metrics(gateway)).channels === 1);
    const crashMs = Date.now() - crashedAt;
    await publish(gateway.url, 'feed', { n: 1 });
    await waitForMessages(other, 'feed', 1);
    assert.equal((await metrics(gateway)).connections, 1);
    console.log(`lease: a frozen follower's channel let go ${letGoMs} ms after it froze, a crashed one's ` +
      `${crashMs} ms after the crash; requests ${JSON.stringify(front.counts.paths)}`);
  } finally {
    await context.close();
    await front.close();
    await gateway.stop();
  }
});

test('without Web Locks, a leader whose timers wake only every 15 s keeps its lease', async () => {
  const gateway = await startGateway({ CASCADE_TRANSPORTS: 'sse,longpoll,poll' });
  const front = await startFront(gateway.port);
  const context = await browser.newContext();
  await context.addInitScript(WITHOUT.locks);
  try {
    const pages = await leaseTabs(context, front, [['feed'], ['feed'], ['feed']]);
    const [leader] = pages;
    await eventually('one connection', async () => (await metrics(gateway)).connections === 1);
    const streams = front.counts.paths['/sse'];
    // Chromium's intensive throttling runs a background tab's timers once a minute, aligned
    // to the minute; here every 15 s, three times the lease.
    await leader.evaluate(() => {
      const setTimeout = window.setTimeout;
      const period = 15000;
      window.setTimeout = function (fn, ms) {
        const due = Date.now() + (ms || 0);
        return setTimeout(fn, Math.ceil(due / period) * period - Date.now());
      };
    });
    const seen = new Set();
    for (let n = 1; n <= 20; n++) {
      await publish(gateway.url, 'feed', { n });
      const roles = await Promise.all(pages.map((p) => p.evaluate(() => window.__client.shareRole)));
      seen.add(roles.join());
      await sleep(2000);
    }
    for (const page of pages) {
      const received = await waitForMessages(page, 'feed', 20);
      assert.deepEqual(received.map((m) => m.n), Array.from({ length: 20 }, (_, i) => i + 1));
    }
    console.log(`lease: a leader throttled to a wake every 15 s for 40 s: roles ${[...seen].join(' / ')}; ` +
      `requests ${JSON.stringify(front.counts.paths)}`);
    assert.deepEqual([...seen], ['leader,follower,follower'], 'no tab took the lease');
    assert.equal(front.counts.paths['/sse'], streams, 'no new stream');
    assert.equal((await metrics(gateway)).connections, 1);
  } finally {
    await context.close();
    await front.close();
    await gateway.stop();
  }
});
