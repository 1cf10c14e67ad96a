// An application's own logic, in Chromium: the example chat backend (examples/chat/backend.py,
// a real child process, with the example's gateway config) behind the gateway's hooks, and
// two pages using the client's application API: alice on a WebSocket, bob on long polling
// (so his calls go as POST /rpc). Login by name through the connect hook, rooms joined by
// the backend (server-side subscriptions arriving as messages), presence asked two ways,
// the trusted `from`, "everyone but the sender", private messages and a backend refusal.
// Then the chat demo at /?backend, the example's front, used by two people.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  API_KEY,
  DEADLINE_MS,
  ROOT,
  eventually,
  freePort,
  launchBrowser,
  openPage,
  startFront,
  startGateway,
  testPageUrl,
  waitForTransport,
} from './support.mjs';

const HOOKS_SECRET = 'app-test-hooks-secret';

let browser;
let backend;
let gateway;
let front;

/** Resolves once something accepts TCP connections on 127.0.0.1:`port`. */
function listening(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

before(async () => {
  browser = await launchBrowser();
  const [backendPort, gatewayPort] = [await freePort(), await freePort()];
  backend = spawn('python3', [path.join(ROOT, 'examples/chat/backend.py')], {
    env: {
      PATH: process.env.PATH,
      CHAT_LISTEN: `127.0.0.1:${backendPort}`,
      CASCADE_URL: `http://127.0.0.1:${gatewayPort}`,
      CASCADE_API_KEY: API_KEY,
      CASCADE_HOOKS_SECRET: HOOKS_SECRET,
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  await eventually('the example backend listens', () => listening(backendPort));
  // The example's own config; the environment moves it to test ports and secrets.
  gateway = await startGateway(
    {
      CASCADE_HOOKS_URL: `http://127.0.0.1:${backendPort}/cascade`,
      CASCADE_HOOKS_SECRET: HOOKS_SECRET,
      CASCADE_POLL_INTERVAL_MS: '200',
    },
    gatewayPort,
    { config: path.join(ROOT, 'examples/chat/cascade.toml') },
  );
  front = await startFront(gateway.port);
});

after(async () => {
  await browser?.close();
  await front?.close();
  await gateway?.stop();
  if (backend && backend.exitCode === null) backend.kill('SIGTERM');
});

/** A page logged in as `name` on `rung`, recording every message its client receives. */
async function user(name, rung) {
  const page = await openPage(browser);
  const options = { channels: [`user:${name}`], client: { transports: [rung], query: { name }, share: false } };
  await page.goto(testPageUrl(front.url, options));
  await waitForTransport(page, rung);
  await page.evaluate(() => {
    window.__all = [];
    window.__client.on('message', (m) => window.__all.push(m));
  });
  return page;
}

/** Calls `method` through the client's promise API; resolves with {result} or {error}. */
function rpc(page, method, params) {
  return page.evaluate(
    ([m, p]) =>
      window.__client.rpc(m, p).then(
        (result) => ({ result }),
        (err) => ({ error: { code: err.code, message: err.message } }),
      ),
    [method, params],
  );
}

/** Waits until `page` received a message on `channel` whose data matches `match`. */
async function received(page, channel, match) {
  return eventually(`${channel} ${JSON.stringify(match)} on the page`, () =>
    page.evaluate(
      ([ch, want]) =>
        window.__all.find(
          (m) => m.channel === ch && Object.keys(want).every((k) => JSON.stringify(m.data[k]) === JSON.stringify(want[k])),
        ),
      [channel, match],
    ),
  );
}

test('the example chat runs on the client API: rpc on two rungs, rooms, presence, from, everyone but the sender', async () => {
  const alice = await user('alice', 'websocket');
  const bob = await user('bob', 'longpoll');

  // Rooms: the backend subscribes the caller (POST /subscribe) and tells the room.
  assert.deepEqual(await rpc(alice, 'join', { room: 'lobby' }), { result: { channel: 'room:lobby' } });
  assert.deepEqual(await rpc(bob, 'join', { room: 'lobby' }), { result: { channel: 'room:lobby' } });
  await received(alice, 'room:lobby', { user: 'bob', joined: true });
  await received(bob, 'room:lobby', { user: 'bob', joined: true });

  // Presence, through the backend's call and from the client itself.
  assert.deepEqual(await rpc(bob, 'online', { room: 'lobby' }), {
    result: { channel: 'room:lobby', users: ['alice', 'bob'] },
  });
  const here = await alice.evaluate(
    () =>
      new Promise((resolve) =>
        window.__client.presence('room:lobby', (err, answer) => resolve({ err, answer })),
      ),
  );
  assert.equal(here.err, null);
  const seen = here.answer.clients.map((c) => `${c.user}/${c.transport}`).sort();
  assert.deepEqual(seen, ['alice/websocket', 'bob/longpoll']);

  // Everyone but the sender: bob's `say` reaches alice, not bob; then alice's own publish
  // carries the `from` the gateway set, and reaches bob after it on the same channel.
  assert.equal(typeof (await rpc(bob, 'say', { text: 'hi all but me' })).result.offset, 'number');
  await received(alice, 'chat', { user: 'bob', text: 'hi all but me' });
  const ack = await alice.evaluate(
    () => new Promise((resolve) => window.__client.publish('chat', { text: 'hello' }, (err) => resolve(err))),
  );
  assert.equal(ack, null);
  const hello = await received(bob, 'chat', { text: 'hello' });
  assert.equal(hello.from.user, 'alice');
  assert.equal(hello.from.client, await alice.evaluate(() => window.__client.clientId));
  const bobsChat = await bob.evaluate(() => window.__all.filter((m) => m.channel === 'chat').map((m) => m.data.text));
  assert.deepEqual(bobsChat, ['hello'], 'bob was left out of his own broadcast');

  // A private message lands in bob's own channel only.
  assert.deepEqual(await rpc(alice, 'whisper', { to: 'bob', text: 'psst' }), { result: {} });
  await received(bob, 'user:bob', { user: 'alice', private: true, text: 'psst' });

  // A backend refusal reaches the caller with the backend's code, on both rungs.
  for (const page of [alice, bob]) {
    const refused = await rpc(page, 'fly', {});
    assert.equal(refused.error.code, 'no_such_call');
  }
  // A client's own publish the backend's publish hook refuses.
  const bad = await bob.evaluate(
    () => new Promise((resolve) => window.__client.publish('chat', { html: '<b>' }, (err) => resolve(err && err.code))),
  );
  assert.equal(bad, 'bad_text');
  await alice.context().close();
  await bob.context().close();
});

test('with the default shared connection, every tab gets the hooked session and the server subscriptions', async () => {
  // Two tabs of one browser share one connection (a SharedWorker holds it).
  const context = await browser.newContext();
  const url = testPageUrl(front.url, { channels: ['user:erin'], client: { query: { name: 'erin' } } });
  const tabs = [];
  for (let i = 0; i < 2; i++) {
    const tab = await context.newPage();
    await tab.goto(url);
    await tab.waitForFunction(() => window.__client && window.__client.transport, null, { timeout: DEADLINE_MS });
    await tab.evaluate(() => {
      window.__all = [];
      window.__client.on('message', (m) => window.__all.push(m));
    });
    tabs.push(tab);
  }
  assert.equal(await tabs[0].evaluate(() => window.__client.shareRole), 'worker');
  // A call from a tab goes with the session: the backend knows the caller.
  assert.deepEqual(await rpc(tabs[1], 'join', { room: 'den' }), { result: { channel: 'room:den' } });
  for (const tab of tabs) await received(tab, 'room:den', { user: 'erin', joined: true });
  // Someone else's line in the room reaches both tabs; a tab's own publish carries `from`.
  const gina = await user('gina', 'longpoll');
  assert.deepEqual(await rpc(gina, 'join', { room: 'den' }), { result: { channel: 'room:den' } });
  assert.deepEqual(await rpc(gina, 'tell', { room: 'den', text: 'hello den' }), { result: {} });
  for (const tab of tabs) await received(tab, 'room:den', { user: 'gina', text: 'hello den' });
  const err = await tabs[0].evaluate(
    () => new Promise((resolve) => window.__client.publish('chat', { text: 'from a tab' }, (e) => resolve(e))),
  );
  assert.equal(err, null);
  const line = await received(gina, 'chat', { text: 'from a tab' });
  assert.equal(line.from.user, 'erin');
  await gina.context().close();
  await context.close();
});

/** Opens the demo at /?backend and logs in as `name` on `transport` ('' for automatic). */
async function demoUser(name, transport) {
  const context = await browser.newContext({ viewport: { width: 900, height: 600 } });
  const page = await context.newPage();
  await page.goto(`${gateway.url}/?backend`);
  await page.fill('#name', name);
  await page.selectOption('#transport', transport);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector(`body[data-transport="${transport || 'websocket'}"]`, { timeout: DEADLINE_MS });
  return page;
}

/** Waits until the open conversation of `page` shows a message with `text` from `author`. */
function shows(page, author, text) {
  return page.waitForFunction(
    ([a, t]) =>
      [...document.querySelectorAll('#messages .message')].some(
        (n) => n.querySelector('.text').textContent === t && n.querySelector('.author').textContent === a,
      ),
    [author, text],
    { timeout: DEADLINE_MS, polling: 20 },
  );
}

async function type(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

test('the demo at /?backend is the example backend\'s front: online list, chat, rooms, private messages', async () => {
  const carol = await demoUser('carol', '');
  const dave = await demoUser('dave', 'longpoll');

  // Who is online, from presence, with each one's rung.
  await carol.waitForSelector('#people li[data-person="dave"] .dot.online', { timeout: DEADLINE_MS });
  await dave.waitForSelector('#people li[data-person="carol"] .dot.online', { timeout: DEADLINE_MS });
  assert.equal(await carol.textContent('#people li[data-person="dave"] .via'), 'longpoll');

  // Everyone: a client's own publish, its author the gateway's `from`.
  await type(carol, 'Hello everyone!');
  await shows(dave, 'carol', 'Hello everyone!');
  await shows(carol, 'you', 'Hello everyone!');

  // A room, joined through the backend (which subscribes the user and tells the room).
  for (const page of [carol, dave]) {
    await page.fill('#room', 'lobby');
    await page.press('#room', 'Enter');
    await page.waitForFunction(() => document.querySelector('#title').textContent === '# lobby', null, {
      timeout: DEADLINE_MS,
    });
  }
  await carol.waitForFunction(() => document.querySelector('#messages').textContent.includes('dave joined'), null, {
    timeout: DEADLINE_MS,
  });
  await type(dave, 'Long polling, through the backend.');
  await shows(carol, 'dave', 'Long polling, through the backend.');
  await shows(dave, 'you', 'Long polling, through the backend.');

  // Privately, through the backend's whisper.
  await dave.click('#people li[data-person="carol"]');
  await type(dave, 'psst');
  await shows(dave, 'you', 'psst');
  await carol.waitForSelector('#people li[data-person="dave"] .unread', { timeout: DEADLINE_MS });
  await carol.click('#people li[data-person="dave"]');
  await shows(carol, 'dave', 'psst');
  const privateText = await carol.textContent('#messages');
  assert.ok(!privateText.includes('Long polling, through the backend.'), privateText);
  await carol.context().close();
  await dave.context().close();
});

test("a name the connect hook refuses reaches the application with the backend's code", async () => {
  const page = await openPage(browser);
  const options = { channels: ['chat'], client: { transports: ['longpoll'], query: { name: 'Not A Name!' }, share: false } };
  await page.goto(testPageUrl(front.url, options));
  await eventually('the refusal reaches the application', () =>
    page.evaluate(() => window.__app.errors.includes('bad_name')),
  );
  assert.deepEqual(await page.evaluate(() => window.__app.received.chat), []);
  await page.context().close();
});
