// The chat demo, driven like a person would: two users in two browser contexts, one on a
// WebSocket and one forced onto long polling, chat in the open channel, in a room and
// privately. The gateway runs the shipped dev config (config/cascade.toml, demo = true),
// as the README does; private messages need each user's token from `cascade token`. The
// run leaves screenshots under target/screenshots/.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { DEADLINE_MS, ROOT, launchBrowser, mintToken, startGateway } from './support.mjs';

const SHOTS = path.join(ROOT, 'target', 'screenshots');
const DEV_CONFIG = path.join(ROOT, 'config', 'cascade.toml');
let browser;
let gateway;

before(async () => {
  browser = await launchBrowser();
  gateway = await startGateway({}, null, { config: DEV_CONFIG });
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await gateway?.stop();
});

/** Opens the demo and logs in as `name` with a token, on `transport` ('' for automatic). */
async function logIn(name, transport) {
  const context = await browser.newContext({ viewport: { width: 900, height: 600 } });
  const page = await context.newPage();
  await page.goto(`${gateway.url}/`);
  await page.fill('#name', name);
  await page.selectOption('#transport', transport);
  await page.fill('#token', mintToken({ sub: name, config: DEV_CONFIG }));
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector(`body[data-transport="${transport || 'websocket'}"]`, { timeout: DEADLINE_MS });
  return page;
}

/** Waits until the open conversation of `page` shows a message with `text`. */
function shows(page, text) {
  return page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages .message .text')].some((n) => n.textContent === t),
    text,
    { timeout: DEADLINE_MS, polling: 20 },
  );
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

async function joinRoom(page, room) {
  await page.fill('#room', room);
  await page.press('#room', 'Enter');
  await page.waitForFunction((r) => document.querySelector('#title').textContent === '# ' + r, room);
}

test('without demo = true (the built-in default) the gateway serves no page at /', async () => {
  const plain = await startGateway();
  try {
    const response = await fetch(`${plain.url}/`);
    assert.equal(response.status, 404);
    assert.equal((await response.json()).error.code, 'not_found');
  } finally {
    await plain.stop();
  }
});

test('two users on different transports chat openly, in a room and privately', async () => {
  const alice = await logIn('alice', '');
  const bob = await logIn('bob', 'longpoll');
  assert.equal(await alice.evaluate(() => window.cascadeDemo.client.transport), 'websocket');
  assert.equal(await bob.evaluate(() => window.cascadeDemo.client.transport), 'longpoll');

  // Presence: each sees the other in the people list.
  await alice.waitForSelector('#people li[data-person="bob"]', { timeout: DEADLINE_MS });
  await bob.waitForSelector('#people li[data-person="alice"]', { timeout: DEADLINE_MS });

  // Broadcast on `chat`.
  await say(alice, 'Hello everyone!');
  await shows(bob, 'Hello everyone!');
  await say(bob, 'Hi alice, long polling here.');
  await shows(alice, 'Hi alice, long polling here.');

  // A room: both join `lobby`, and what one writes there the other sees.
  await joinRoom(alice, 'lobby');
  await joinRoom(bob, 'lobby');
  await bob.waitForFunction(() => document.querySelector('#messages').textContent.includes('joined'), null, {
    timeout: DEADLINE_MS,
  });
  await say(alice, 'Welcome to the lobby, bob.');
  await shows(bob, 'Welcome to the lobby, bob.');
  await say(bob, 'Thanks! Nice room.');
  await shows(alice, 'Thanks! Nice room.');

  // A private message from bob to alice, on user:alice.
  await bob.click('#people li[data-person="alice"]');
  await bob.waitForFunction(() => document.querySelector('#title').textContent === '@ alice');
  await say(bob, 'psst, this one is just for you');
  await shows(bob, 'psst, this one is just for you');
  await alice.waitForSelector('#people li[data-person="bob"] .unread', { timeout: DEADLINE_MS });
  await alice.click('#people li[data-person="bob"]');
  await shows(alice, 'psst, this one is just for you');
  await say(alice, 'Got it, thanks bob!');
  await bob.waitForFunction(
    () => document.querySelector('#people li[data-person="alice"] .unread') || document.body.textContent.includes('Got it, thanks bob!'),
    null,
    { timeout: DEADLINE_MS },
  );

  // The room message stayed out of the private conversation.
  const privateText = await alice.textContent('#messages');
  assert.ok(!privateText.includes('Welcome to the lobby'), privateText);

  // Back in the room for the screenshots: each user, then both side by side for the README.
  await alice.click('#channels li[data-key="room:lobby"]');
  await bob.click('#channels li[data-key="room:lobby"]');
  await say(bob, 'My tab is forced onto long polling, yours is on a WebSocket.');
  await shows(alice, 'My tab is forced onto long polling, yours is on a WebSocket.');
  await say(alice, 'Same bus, same order. Cascade picks the best rung each browser can get.');
  await shows(bob, 'Same bus, same order. Cascade picks the best rung each browser can get.');
  const aliceShot = await alice.screenshot({ path: path.join(SHOTS, 'demo-alice.png') });
  const bobShot = await bob.screenshot({ path: path.join(SHOTS, 'demo-bob.png') });
  const composer = await browser.newPage({ viewport: { width: 1840, height: 660 } });
  await composer.setContent(`<!doctype html><style>
      body { margin: 0; padding: 20px; display: flex; gap: 20px; background: #e9ecf3; font: 600 14px system-ui, sans-serif; color: #394055; }
      figure { margin: 0; } img { display: block; width: 900px; border-radius: 10px; box-shadow: 0 6px 24px rgba(0,0,0,.12); }
      figcaption { margin-top: 6px; text-align: center; }
    </style>
    <figure><img src="data:image/png;base64,${aliceShot.toString('base64')}"><figcaption>alice, automatic: WebSocket</figcaption></figure>
    <figure><img src="data:image/png;base64,${bobShot.toString('base64')}"><figcaption>bob, forced: long polling</figcaption></figure>`);
  await composer.screenshot({ path: path.join(SHOTS, 'demo.png') });
  await composer.close();
  await alice.context().close();
  await bob.context().close();
});
