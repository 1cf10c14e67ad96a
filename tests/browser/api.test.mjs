// The client API on every rung: the `token` option carried on every request, publish with
// an acknowledgement (over the WebSocket, or POST /publish from a read-only rung), channels
// added and dropped while connected, a refused token reported as an error rather than
// blamed on the network, and an expired token renewed through getToken with nothing lost.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  appState,
  contiguous,
  launchBrowser,
  metricValue,
  mintToken,
  openPage,
  publishRetrying,
  publish,
  startFront,
  startGateway,
  testPageUrl,
  ticker,
  waitForMessages,
  waitForTransport,
} from './support.mjs';

let browser;
let gateway;
let front;
let token;

before(async () => {
  browser = await launchBrowser();
  gateway = await startGateway({ CASCADE_POLL_INTERVAL_MS: '200' });
  front = await startFront(gateway.port);
  // Under the gateway's default rules a browser may only publish with a token that allows it.
  token = mintToken({ sub: 'tester', publish: 'a-*' });
});

after(async () => {
  await browser?.close();
  await front?.close();
  await gateway?.stop();
});

for (const rung of ['websocket', 'sse', 'longpoll', 'poll']) {
  test(`on ${rung}: publish is acknowledged, channels come and go while connected`, async () => {
    const page = await openPage(browser);
    const a = `a-${rung}`;
    const b = `b-${rung}`;
    await page.goto(testPageUrl(front.url, { channels: [a], client: { transports: [rung], token } }));
    await waitForTransport(page, rung);

    // The application publishes; the acknowledgement carries the position it got.
    const ack = await page.evaluate(
      (channel) =>
        new Promise((resolve) => {
          window.__client.publish(channel, { n: 1 }, (err, position) => resolve({ err, position }));
        }),
      a,
    );
    assert.equal(ack.err, null);
    assert.equal(ack.position.channel, a);
    assert.equal(ack.position.offset, 1);
    const [first] = await waitForMessages(page, a, 1);
    assert.deepEqual([first.n, first.epoch, first.offset], [1, ack.position.epoch, 1]);

    // A channel added at runtime starts delivering (from now on), in order.
    await page.evaluate((channel) => {
      window.__app.received[channel] = [];
      window.__client.subscribe(channel, (data, message) => {
        window.__app.received[channel].push({ n: data.n, epoch: message.epoch, offset: message.offset });
      });
    }, b);
    const tick = ticker(gateway.url, b, 30);
    const onB = await waitForMessages(page, b, 3);
    await tick.stop();
    assert.equal(contiguous(onB), null);

    // Dropping a channel stops its messages; the other keeps flowing.
    await page.evaluate((channel) => window.__client.unsubscribe(channel), a);
    const stoppedAt = await page.evaluate((ch) => window.__app.received[ch].length, a);
    const last = await page.evaluate((ch) => window.__app.received[ch].length, b);
    // Publish on `a` first: once the later `b` message arrives, `a`'s would have too.
    await publish(gateway.url, a, { n: 2 });
    const sentinel = await publish(gateway.url, b, { n: 1000 });
    await page.waitForFunction(
      ([ch, offset]) => window.__app.received[ch].some((m) => m.offset >= offset),
      [b, sentinel.offset],
      { timeout: 10_000 },
    );
    assert.equal(await page.evaluate((ch) => window.__app.received[ch].length, a), stoppedAt);
    assert.ok((await page.evaluate((ch) => window.__app.received[ch].length, b)) > last);
    await page.context().close();
  });
}

test('a refused token is an error for the application, not a reason to fall down the ladder', async () => {
  const page = await openPage(browser);
  await page.goto(testPageUrl(front.url, { channels: ['anything'], client: { token: 'not-a-token' } }));
  await page.waitForFunction(() => window.__app.errors.length >= 2, null, { timeout: 20_000 });
  const state = await appState(page);
  assert.ok(state.errors.every((code) => code === 'token_invalid'), state.errors.join());
  assert.deepEqual(state.transports, []);
  const metrics = await (await fetch(`${gateway.url}/metrics`)).text();
  assert.equal(metricValue(metrics, 'cascade_fallbacks_total'), 0, 'no rung was blamed');
  await page.context().close();
});

for (const rung of ['websocket', 'sse', 'longpoll', 'poll']) {
  test(`on ${rung}: an expired token is renewed through getToken, and no message is lost`, async () => {
    const page = await openPage(browser);
    const channel = `renew-${rung}`;
    // Expires within 2–3 s (a token's expiry is in whole seconds); its successor lasts.
    const short = mintToken({ sub: 'renewer', ttl: '3s' });
    const lasting = mintToken({ sub: 'renewer' });
    await page.goto(
      testPageUrl(front.url, { channels: [channel], tokens: [lasting], client: { transports: [rung], token: short } }),
    );
    await waitForTransport(page, rung);
    const tick = ticker(gateway.url, channel, 50);
    // Past the first token's expiry, with messages published all along, and on after it.
    await page.waitForFunction(() => window.__app.disconnects.includes('token_expired'), null, { timeout: 20_000 });
    const atExpiry = await page.evaluate((ch) => window.__app.received[ch].length, channel);
    await waitForMessages(page, channel, atExpiry + 5);
    const published = await tick.stop();
    const received = await waitForMessages(page, channel, published);
    const state = await appState(page);
    assert.equal(state.tokensGiven, 1, 'getToken was asked once');
    assert.deepEqual(state.errors, [], 'an expiry getToken mends is no error for the application');
    assert.equal(received.length, published, 'each message once');
    assert.equal(received[0].n, 1);
    assert.equal(contiguous(received), null);
    assert.ok(state.connects >= 2, `reconnected (${state.connects} connects)`);
    assert.deepEqual([...new Set(state.transports)], [rung]);
    await page.context().close();
  });
}

test('without a token, getToken is asked before the first connection; one that gives none is an error', async () => {
  // A user's own channel is refused without that user's token.
  const page = await openPage(browser);
  const own = 'user:renewer';
  await page.goto(testPageUrl(front.url, { channels: [own], tokens: [mintToken({ sub: 'renewer' })] }));
  await page.waitForFunction(() => window.__client.transport !== null, null, { timeout: 20_000 });
  const sent = await publishRetrying(gateway.url, own, { n: 1 });
  const [first] = await waitForMessages(page, own, 1);
  assert.equal(first.offset, sent.offset);
  const state = await appState(page);
  assert.equal(state.tokensGiven, 1);
  assert.deepEqual(state.errors, []);
  await page.context().close();

  const empty = await openPage(browser);
  await empty.goto(testPageUrl(front.url, { channels: ['anything'], tokens: [] }));
  await empty.waitForFunction(() => window.__app.errors.length >= 2, null, { timeout: 20_000 });
  const refused = await appState(empty);
  assert.ok(refused.errors.every((code) => code === 'token_unavailable'), refused.errors.join());
  assert.deepEqual(refused.transports, [], 'no connection is tried without a token');
  await empty.context().close();
});
