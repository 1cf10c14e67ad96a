// No sticky sessions: two and three gateways on one Redis behind a proxy that sends each
// request to the next node in turn. Polling-only socket.io-client sessions connect, emit
// with acks, receive every message in order, every node serves some of their polls, and
// a reconnect is recovered with what it missed.
//
// Needs Redis at CASCADE_TEST_REDIS_URL (default redis://127.0.0.1:6379/0), as the Rust
// multi-node tests do; fails loudly without it.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, test } from 'node:test';

import { API_KEY, startGateway } from './support.mjs';
import { io } from 'socket.io-client';

import { collect, connect, hooksEnv, startBackend, waitFor } from './sio_support.mjs';

const REDIS = process.env.CASCADE_TEST_REDIS_URL || 'redis://127.0.0.1:6379/0';

/** A proxy that sends request i to upstream i mod n; counts requests per upstream. */
async function roundRobin(ports) {
  let next = 0;
  const served = ports.map(() => 0);
  const bySession = new Map();
  const server = http.createServer((req, res) => {
    const at = next++ % ports.length;
    served[at] += 1;
    const sid = new URL(req.url, 'http://x').searchParams.get('sid');
    if (sid) bySession.set(sid, (bySession.get(sid) || new Set()).add(at));
    const upstream = http.request(
      { host: '127.0.0.1', port: ports[at], method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    served,
    bySession,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    }),
  };
}

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

for (const count of [2, 3]) {
  test(`polling-only sessions across ${count} nodes behind a round-robin proxy lose nothing`, async () => {
    let proxy;
    const backend = await startBackend(() => proxy.url);
    cleanups.push(() => backend.close());
    const prefix = `sio-${count}-${process.pid}-${Date.now()}`;
    const env = {
      ...hooksEnv(backend.url),
      CASCADE_ENGINE: 'redis',
      CASCADE_REDIS_URL: REDIS,
      CASCADE_REDIS_PREFIX: prefix,
    };
    const nodes = [];
    for (let i = 0; i < count; i++) {
      const node = await startGateway(env);
      nodes.push(node);
      cleanups.push(() => node.stop());
    }
    proxy = await roundRobin(nodes.map((n) => n.port));
    cleanups.push(() => proxy.close());

    const options = { transports: ['polling'] };
    const a = await connect(proxy.url, { ...options, auth: { name: `na${count}` } });
    const b = await connect(proxy.url, { ...options, auth: { name: `nb${count}` } });
    try {
      const got = collect(a, 'message');
      const said = collect(a, 'msg');
      // Each ack is answered by whichever node serves the next poll.
      for (let i = 0; i < 5; i++) {
        const answer = await a.timeout(10_000).emitWithAck('echo', i);
        assert.deepEqual(answer.params, [i]);
      }
      await b.timeout(10_000).emitWithAck('say', 'across nodes');
      await waitFor(said, 1);
      assert.deepEqual(said[0], { from: `nb${count}`, text: 'across nodes' });
      const total = 60;
      for (let n = 0; n < total; n++) {
        const response = await fetch(`${proxy.url}/publish`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-cascade-api-key': API_KEY },
          body: JSON.stringify({ channel: 'chat', data: { n } }),
        });
        assert.equal(response.status, 200);
      }
      await waitFor(got, total, 30_000);
      assert.deepEqual(got.map((m) => m.n), [...Array(total).keys()], 'every message, once, in order');
      assert.ok(proxy.served.every((n) => n > 3), `every node served polls: ${proxy.served}`);
      // Each session's own requests, not only the sum, reached every node.
      assert.equal(proxy.bySession.size, 2);
      for (const [sid, at] of proxy.bySession) assert.equal(at.size, count, `session ${sid} met ${[...at]}`);
    } finally {
      a.close();
      b.close();
    }

    // Recovery on Redis: the reconnect's polls land on any node, and it is recovered
    // with what was published while it was away.
    const c = io(proxy.url, {
      ...options,
      forceNew: true,
      auth: { name: `nc${count}` },
      reconnectionDelay: 100,
      reconnectionDelayMax: 200,
    });
    try {
      const got = collect(c, 'message');
      await new Promise((resolve) => c.once('connect', resolve));
      const id = c.id;
      const send = (n) =>
        fetch(`${proxy.url}/publish`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-cascade-api-key': API_KEY },
          body: JSON.stringify({ channel: 'chat', data: { r: n } }),
        });
      await send(1);
      await waitFor(got, 1);
      c.io.engine.close();
      await send(2);
      await send(3);
      await new Promise((resolve) => c.once('connect', resolve));
      assert.equal(c.recovered, true, 'recovered across nodes');
      assert.equal(c.id, id);
      await waitFor(got, 3);
      assert.deepEqual(got.map((m) => m.r), [1, 2, 3]);
    } finally {
      c.close();
    }
  });
}
