// The real socket.io-client 4.x (npm) in Node against Cascade's /socket.io/: every
// transport choice, emits with and without acks, rooms, private messages, broadcast to
// everyone but the sender, and connection state recovery.

import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';

import { publish, sleep, startGateway } from './support.mjs';
import { collect, connect, hooksEnv, presenceConfig, startBackend, waitFor } from './sio_support.mjs';

const TRANSPORTS = {
  websocket: { transports: ['websocket'] },
  polling: { transports: ['polling'] },
  default: {},
};

let gateway;
let backend;

before(async () => {
  backend = await startBackend(() => gateway.url);
  const config = presenceConfig();
  try {
    gateway = await startGateway(hooksEnv(backend.url), null, { config });
  } finally {
    rmSync(config, { force: true });
  }
});

after(async () => {
  await gateway?.stop();
  await backend?.close();
});

for (const [name, options] of Object.entries(TRANSPORTS)) {
  describe(`socket.io-client over ${name}`, () => {
    test('connects, emits with an ack, and receives channel messages as events', async () => {
      const socket = await connect(gateway.url, { ...options, auth: { name: `ann_${name}` } });
      try {
        assert.ok(socket.id, 'a socket id');
        const answer = await socket.timeout(10_000).emitWithAck('echo', 1, { two: 2 });
        assert.deepEqual(answer.params, [1, { two: 2 }]);
        assert.equal(answer.user, `ann_${name}`);
        assert.equal(answer.client, socket.id);
        const plain = collect(socket, 'message');
        const named = collect(socket, 'news');
        await publish(gateway.url, 'chat', { n: 1 });
        await fetch(`${gateway.url}/publish`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-cascade-api-key': (await import('./support.mjs')).API_KEY },
          body: JSON.stringify({ channel: 'chat', event: 'news', data: { n: 2 } }),
        });
        await waitFor(plain, 1);
        await waitFor(named, 1);
        assert.deepEqual(plain[0], { n: 1 });
        assert.deepEqual(named[0], { n: 2 });
        // Without an ack the backend is called all the same.
        const before = backend.calls.filter((c) => c.method === 'echo').length;
        socket.emit('echo', 'no ack');
        await waitFor({ get length() { return backend.calls.filter((c) => c.method === 'echo').length - before; } }, 1);
        if (name === 'default') {
          await waitFor({ get length() { return socket.io.engine.transport.name === 'websocket' ? 1 : 0; } }, 1);
        }
        // Present in its rooms, under its transport's name.
        const { API_KEY } = await import('./support.mjs');
        const presence = await (await fetch(`${gateway.url}/presence?channel=chat`, { headers: { 'x-cascade-api-key': API_KEY } })).json();
        const me = presence.clients.find((c) => c.client === socket.id);
        assert.ok(me, JSON.stringify(presence));
        assert.equal(me.user, `ann_${name}`);
        assert.match(me.transport, name === 'polling' ? /^socketio-polling$/ : /^socketio-(websocket|polling)$/);
      } finally {
        socket.close();
      }
    });

    test('rooms, private messages and everyone but the sender', async () => {
      const a = await connect(gateway.url, { ...options, auth: { name: `a_${name}` } });
      const b = await connect(gateway.url, { ...options, auth: { name: `b_${name}` } });
      try {
        const gotA = collect(a, 'msg');
        const gotB = collect(b, 'msg');
        await a.timeout(10_000).emitWithAck('say', 'hello all');
        await waitFor(gotB, 1);
        assert.deepEqual(gotB[0], { from: `a_${name}`, text: 'hello all' });
        await b.timeout(10_000).emitWithAck('whisper', { to: `a_${name}`, text: 'psst' });
        await waitFor(gotA, 1);
        assert.deepEqual(gotA[0], { from: `b_${name}`, text: 'psst', private: true });
        // The sender was left out of its own broadcast.
        assert.equal(gotA.filter((m) => m.text === 'hello all').length, 0);
        const room = `r_${name}`;
        const joined = await b.timeout(10_000).emitWithAck('join', room);
        assert.deepEqual(joined, { joined: room });
        const inRoom = collect(b, 'message');
        // The join reaches a polling socket by its next request at the latest.
        await sleep(300);
        await publish(gateway.url, `room:${room}`, { in: room });
        await waitFor(inRoom, 1);
        assert.deepEqual(inRoom[0], { in: room });
      } finally {
        a.close();
        b.close();
      }
    });
  });
}

for (const [name, options] of Object.entries(TRANSPORTS)) {
  test(`POST /disconnect ends a socket over ${name} as a server disconnect`, async () => {
    const { API_KEY } = await import('./support.mjs');
    const socket = await connect(gateway.url, { ...options, auth: { name: `gone_${name}` } });
    const reason = new Promise((resolve, reject) => {
      socket.once('disconnect', resolve);
      setTimeout(() => reject(new Error('no disconnect within 15 s')), 15_000).unref();
    });
    const response = await fetch(`${gateway.url}/disconnect`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-cascade-api-key': API_KEY },
      body: JSON.stringify({ user: `gone_${name}` }),
    });
    assert.equal(response.status, 200);
    assert.equal(await reason, 'io server disconnect');
    socket.close();
  });
}

test('a refused connect is a connect_error with the backend message', async () => {
  await assert.rejects(connect(gateway.url, { auth: { name: 'mallory' } }), (err) => {
    assert.match(err.message, /not you/);
    assert.equal(err.data?.code, 'banned');
    return true;
  });
});

test('a namespace that is not served is a connect_error', async () => {
  await assert.rejects(connect(`${gateway.url}/admin`, { transports: ['websocket'] }), /Invalid namespace/);
});

for (const [name, options] of Object.entries(TRANSPORTS)) {
  test(`reconnects with recovery over ${name}: nothing missed`, async () => {
    const { io } = await import('socket.io-client');
    const socket = io(gateway.url, {
      ...options,
      forceNew: true,
      auth: { name: `rec_${name}` },
      reconnectionDelay: 100,
      reconnectionDelayMax: 200,
    });
    const got = collect(socket, 'message');
    try {
      await new Promise((resolve) => socket.once('connect', resolve));
      assert.equal(socket.recovered, false);
      const firstId = socket.id;
      await publish(gateway.url, 'chat', { k: 1 });
      await waitFor(got, 1);
      if (name === 'default') {
        await waitFor({ get length() { return socket.io.engine.transport.name === 'websocket' ? 1 : 0; } }, 1);
      }
      // The transport drops; messages published meanwhile are not lost.
      socket.io.engine.close();
      await publish(gateway.url, 'chat', { k: 2 });
      await publish(gateway.url, 'chat', { k: 3 });
      await new Promise((resolve) => socket.once('connect', resolve));
      assert.equal(socket.recovered, true, 'recovered');
      assert.equal(socket.id, firstId, 'the same socket id');
      await waitFor(got, 3);
      assert.deepEqual(got.map((m) => m.k).slice(0, 3), [1, 2, 3]);
    } finally {
      socket.close();
    }
  });
}
