// Uses the client as an application would; `tsc -p client/types-test` checks it against
// cascade.d.ts. Lines marked @ts-expect-error must fail to type-check: a declaration that
// grows too loose fails the check as surely as one that is wrong.
import Cascade = require('../cascade');

interface ChatLine {
  text: string;
}

const client: Cascade.Client = Cascade.connect('', {
  channels: ['chat'],
  transports: ['sse', 'longpoll'],
  timeouts: { sse: 1000, token: 5000 },
  query: { name: 'alice' },
  getToken: (done) => done(null, 'a.b.c'),
});

client
  .subscribe<ChatLine>('chat', (data, message) => {
    const text: string = data.text;
    const at: number = message.offset + message.ts;
    console.log(text, at, message.epoch);
  })
  .on('connect', (info) => console.log(info.transport))
  .on('disconnect', (info) => console.log(info.reason, info.retryMs))
  .on('error', (err) => console.log(err.code, err.channel))
  .on('gap', (gap) => console.log(gap.first))
  .on('transport', (name) => console.log(name));

client.publish('chat', { text: 'hi' }, (err, position) => {
  if (err) {
    console.log(err.code);
  } else if (position) {
    console.log(position.offset);
  }
});

client.rpc('login', { name: 'alice' }, (err, result) => {
  console.log(err ? err.code : result);
});
client
  .rpc<{ ok: boolean }>('login', { name: 'alice' })
  .then((result) => console.log(result.ok), (err: Cascade.CascadeError) => console.log(err.code));
client.on('session', (id: string) => console.log(id, client.clientId));
// @ts-expect-error: params must be JSON
client.rpc('login', () => 1);

const rung: Cascade.Transport | null = client.transport;
console.log(rung, Cascade.version, Cascade.transports.length);

Cascade.connect('', { getToken: () => Promise.resolve('a.b.c') });
Cascade.connect('', { share: false, raceDelayMs: false });
Cascade.connect('', { share: 'leader', raceDelayMs: 100, workerUrl: '/static/cascade.js' });
const role: Cascade.ShareRole | null = client.shareRole;
console.log(role === 'leader' || role === 'follower' || role === 'worker');

// @ts-expect-error: not a transport
Cascade.connect('', { transports: ['carrier-pigeon'] });
// @ts-expect-error: not an event
client.on('mesage', () => undefined);
// @ts-expect-error: an error handler gets an error, not a string
client.on('error', (err: string) => console.log(err));
// @ts-expect-error: data must be JSON
client.publish('chat', () => 1);
// @ts-expect-error: transport is read-only
client.transport = 'sse';
// @ts-expect-error: not a way to share
Cascade.connect('', { share: 'worker' });
// @ts-expect-error: shareRole is read-only
client.shareRole = 'leader';

client.close();
