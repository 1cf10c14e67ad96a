/*!
 * Cascade browser client: one connection to a Cascade gateway over the best transport the
 * browser and the network allow (WebSocket, Server-Sent Events, long polling, short
 * polling), with automatic fallback, climbing back up, and exactly-once, in-order delivery
 * across reconnects and transport switches.
 *
 * Dependency-free ES5 (XMLHttpRequest, no fetch, no Promise). Use it from a <script> tag
 * (global `Cascade`), CommonJS or AMD:
 *
 *   var c = Cascade.connect('', { channels: ['chat'] });   // '' = this page's origin
 *   c.subscribe('chat', function (data, message) { ... });  // from now on
 *   c.publish('chat', { text: 'hi' }, function (err, position) { ... });
 *   c.on('transport', function (name) { ... });
 *   c.unsubscribe('chat'); c.close();
 *
 * Options: token (sent as token= on every request), getToken(done) (asked for a new token
 * when there is none or the gateway says it expired; calls done(err, token), or returns
 * a promise of the token), transports (the rungs allowed, e.g. ['longpoll']), channels,
 * timeouts {websocket, sse, longpoll, poll, negotiate, publish, token} in ms (how long
 * each rung has to show that data flows; token: how long getToken may take),
 * probeIntervalMs (how often to try better rungs after a fallback), minBackoffMs /
 * maxBackoffMs, remember (start from the rung that last worked in this tab, kept in
 * sessionStorage), raceDelayMs (the head start a WebSocket or SSE attempt gets before long
 * polling starts beside it and carries the messages until the stream proves itself;
 * default 250, at least three /negotiate round trips; false: no race), share (true by default: the tabs of an origin share one
 * connection, through a SharedWorker running this file where there is one (a lone tab
 * uses its own until a second one comes), else a leader tab elected with a Web Lock (or a
 * localStorage lease) over a BroadcastChannel (or storage events), else one per tab;
 * 'leader': no SharedWorker; false: one connection per tab), workerUrl (this script's URL for the
 * SharedWorker; by default the src of the script tag that loaded it).
 * Deadlines are judged by the wall clock: one whose timer fires late (a throttled or
 * frozen background tab) starts over instead of failing the connection.
 * Events: connect {transport}, disconnect {reason, retryMs}, transport (name), gap
 * {channel, epoch, first}, error {code, message, channel} (`channel` when the gateway
 * refused that channel, which the client then drops), message (every delivered message).
 * c.transport is the rung in use, or null while disconnected; c.shareRole is 'worker'
 * (shared through the worker), 'leader' (this tab holds the shared connection), 'follower'
 * or null (not shared).
 *
 * The wire contract is docs/PROTOCOL.md; the gateway serves this file at /cascade.js.
 */
(function (root, factory) {
  if (typeof define === 'function' && define.amd) {
    define([], function () { return factory(root); });
  } else if (typeof module === 'object' && module.exports) {
    module.exports = factory(root);
  } else {
    root.Cascade = factory(root);
  }
}(typeof self !== 'undefined' ? self
  : typeof window !== 'undefined' ? window
  : typeof globalThis !== 'undefined' ? globalThis : this, function (root) {
  'use strict';

  var VERSION = '0.1.0';

  /** The ladder assumed until /negotiate answers: every rung, best first. */
  var DEFAULT_LADDER = [
    { name: 'websocket', url: '/ws' },
    { name: 'sse', url: '/sse' },
    { name: 'longpoll', url: '/longpoll', timeout_ms: 25000 },
    { name: 'poll', url: '/poll', interval_ms: 2000 }
  ];

  var DEFAULTS = {
    // How long each rung has to show that data flows before it counts as failed.
    timeouts: { websocket: 4000, sse: 3000, longpoll: 5000, poll: 5000, negotiate: 5000, publish: 10000, rpc: 10000, token: 10000 },
    // How often, after a fallback, the client tries the better rungs again.
    probeIntervalMs: 60000,
    // Reconnect backoff: a random delay in [0, min(max, min * 2^attempt)] (full jitter).
    minBackoffMs: 250,
    maxBackoffMs: 30000,
    // Remember the rung that last worked (sessionStorage) and start there next time.
    remember: true,
    // The head start a streaming rung (WebSocket, SSE) gets before long polling starts
    // beside it (as Happy Eyeballs gives IPv6): on a good network the stream proves itself
    // first and the race costs nothing; behind a proxy that buffers or silences the stream,
    // messages flow over long polling while the stream's deadline runs. false: no race.
    raceDelayMs: 250,
    // One connection for all tabs of this origin (SharedWorker, else a leader tab); false:
    // one per tab; 'leader': skip the SharedWorker and elect a leader tab.
    share: true
  };

  var CHANNEL = /^[A-Za-z0-9_\-.:\/]{1,128}$/;

  /**
   * A stream proves itself in about three round trips (connect, upgrade or request, the
   * first frame); /negotiate, started with it, takes one or two: long polling's head start
   * is at least this many /negotiate durations, however short `raceDelayMs`.
   */
  var RACE_ROUND_TRIPS = 3;

  /** WebSocket close codes the gateway uses, by what they mean to the client. */
  var CLOSE_REASONS = {
    1012: 'shutdown', 4008: 'slow_consumer', 4009: 'disconnected', 4011: 'engine_unavailable'
  };

  // ---------------------------------------------------------------------------------------
  // Small helpers

  function noop() {}

  function later(fn, ms) { return setTimeout(fn, ms); }

  function cancel(timer) {
    if (!timer) { return; }
    if (typeof timer.stop === 'function') { timer.stop(); } else { clearTimeout(timer); }
  }

  /**
   * How much later than asked a deadline's timer may fire before the page counts as having
   * slept: a background tab's timers are aligned to 1 s, or to 1 min when Chromium
   * throttles them hard, and a frozen tab's run only once it thaws.
   */
  var LATE_MS = 1500;

  /**
   * Calls `fn` when `ms` have passed with the page awake to see an answer arrive. A timer
   * that fires late says the page slept (a throttled or frozen background tab, socket.io
   * #4040): the answer may be queued right behind it, so the deadline starts over instead
   * of declaring the connection dead. Judged by the wall clock, not by counting ticks.
   * Returns a handle for cancel().
   */
  function deadline(fn, ms) {
    var handle = {
      timer: null,
      stop: function () { clearTimeout(handle.timer); handle.timer = null; }
    };
    function arm() {
      var due = Date.now() + ms;
      handle.timer = later(function () {
        handle.timer = null;
        if (Date.now() - due > LATE_MS) {
          arm();
        } else {
          fn();
        }
      }, ms);
    }
    arm();
    return handle;
  }

  function parse(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  function has(obj, key) { return Object.prototype.hasOwnProperty.call(obj, key); }

  /** `names` without the channels of `refused` ([{channel, code}]). */
  function without(names, refused) {
    if (!refused || !refused.length) { return names; }
    var out = [];
    for (var i = 0; i < names.length; i++) {
      var kept = true;
      for (var j = 0; j < refused.length; j++) {
        if (refused[j] && refused[j].channel === names[i]) { kept = false; break; }
      }
      if (kept) { out.push(names[i]); }
    }
    return out;
  }

  function indexOfName(list, name) {
    for (var i = 0; i < list.length; i++) {
      if (list[i].name === name) { return i; }
    }
    return -1;
  }

  function merge(defaults, given) {
    var out = {}, key;
    for (key in defaults) { if (has(defaults, key)) { out[key] = defaults[key]; } }
    if (given) {
      for (key in given) {
        if (has(given, key) && given[key] !== undefined) { out[key] = given[key]; }
      }
    }
    return out;
  }

  /** Calls application code so that a throwing handler cannot break the client. */
  function safely(fn, self, args) {
    try {
      fn.apply(self, args);
    } catch (e) {
      later(function () { throw e; }, 0);
    }
  }

  function query(params) {
    var parts = [], key;
    for (key in params) {
      if (has(params, key) && params[key] !== undefined && params[key] !== null && params[key] !== '') {
        parts.push(encodeURIComponent(key) + '=' + encodeURIComponent(params[key]));
      }
    }
    return parts.join('&');
  }

  function withQuery(url, params) {
    var q = query(params);
    if (!q) { return url; }
    return url + (url.indexOf('?') < 0 ? '?' : '&') + q;
  }

  /** The gateway's http(s) base URL, without a trailing slash. */
  function resolveBase(url) {
    var loc = root.location;
    var origin = loc ? loc.protocol + '//' + loc.host : '';
    url = url || '';
    if (/^wss?:\/\//i.test(url)) { url = url.replace(/^ws/i, 'http'); }
    if (/^https?:\/\//i.test(url)) { return url.replace(/\/+$/, ''); }
    if (url.charAt(0) === '/') { return origin + url.replace(/\/+$/, ''); }
    return origin + (url ? '/' + url.replace(/\/+$/, '') : '');
  }

  /**
   * One HTTP request. `done(err, json)`; err is {code, message, status, refused}, status 0
   * for a network failure or a timeout. Returns a handle whose abort() silences the callback.
   */
  function request(method, url, body, timeoutMs, done) {
    var XHR = root.XMLHttpRequest;
    var finished = false, timer = null, xhr;
    function finish(err, json) {
      if (finished) { return; }
      finished = true;
      cancel(timer);
      done(err, json);
    }
    try {
      xhr = new XHR();
      xhr.open(method, url, true);
      if (body !== null && body !== undefined) { xhr.setRequestHeader('Content-Type', 'application/json'); }
      xhr.onreadystatechange = function () {
        if (xhr.readyState !== 4 || finished) { return; }
        var status = xhr.status;
        var json = parse(xhr.responseText);
        if (status >= 200 && status < 300 && json) {
          finish(null, json);
        } else if (status === 0) {
          finish({ code: 'network', message: 'the request failed', status: 0 });
        } else {
          var e = json && json.error;
          finish({
            code: (e && e.code) || 'http_' + status,
            message: (e && e.message) || 'HTTP ' + status,
            status: status,
            // The channels the gateway refused, when it refused all of a subscription's.
            refused: json && json.refused
          });
        }
      };
      timer = deadline(function () {
        finish({ code: 'timeout', message: 'no answer in ' + timeoutMs + ' ms', status: 0 });
        try { xhr.abort(); } catch (e) { /* already done */ }
      }, timeoutMs);
      xhr.send(body === null || body === undefined ? null : body);
    } catch (e) {
      later(function () { finish({ code: 'network', message: String(e && e.message || e), status: 0 }); }, 0);
    }
    return {
      abort: function () {
        if (finished) { return; }
        finished = true;
        cancel(timer);
        try { xhr.abort(); } catch (e) { /* already done */ }
      }
    };
  }

  function storage() {
    try {
      var s = root.sessionStorage;
      return s && typeof s.getItem === 'function' ? s : null;
    } catch (e) {
      return null;
    }
  }

  /** Whether this browser has what a rung needs. */
  function supported(name) {
    if (name === 'websocket') {
      return typeof root.WebSocket === 'function' || typeof root.WebSocket === 'object';
    }
    if (name === 'sse') {
      return typeof root.EventSource === 'function' || typeof root.EventSource === 'object';
    }
    return typeof root.XMLHttpRequest === 'function' || typeof root.XMLHttpRequest === 'object';
  }

  // ---------------------------------------------------------------------------------------
  // Rungs. Each one: open(done) calls done(null) once data demonstrably flows, or
  // done(reason, auth) when it cannot (`auth` {code, message} when the gateway refused the
  // credentials: no other rung would do better); after that, drops are reported with
  // client._down(rung, info).
  // close() tears it down silently. sync() brings its channels in line with the client's and
  // returns false when it cannot do that in place (SSE: the stream must be replaced).

  function WebSocketRung(client, spec) {
    this.name = 'websocket';
    this.client = client;
    this.spec = spec;
    this.ws = null;
    this.dead = false;
    this.proven = false;
    this.channels = [];
  }

  WebSocketRung.prototype.open = function (done) {
    var self = this, client = this.client, opened = false, timer = null;
    function fail(reason) {
      if (self.dead || self.proven) { return; }
      self.close();
      done(reason);
    }
    if (!client._supported('websocket')) { later(function () { fail('unsupported'); }, 0); return; }
    try {
      this.ws = new root.WebSocket(client._wsUrl(this.spec.url));
    } catch (e) {
      later(function () { fail('refused'); }, 0);
      return;
    }
    timer = deadline(function () { fail('timeout'); }, client.options.timeouts.websocket);
    this.ws.onopen = function () {
      if (self.dead) { return; }
      opened = true;
      if (!self.resync()) {
        // No channels: an empty unsubscribe is answered too, which proves the path.
        self.send({ op: 'unsubscribe', channels: [] });
      }
    };
    this.ws.onmessage = function (event) {
      if (self.dead) { return; }
      var frame = parse(event.data);
      if (!frame) { return; }
      if (!self.proven) {
        self.proven = true;
        cancel(timer);
        done(null);
      }
      self.frame(frame);
    };
    this.ws.onclose = function (event) {
      if (self.dead) { return; }
      // The gateway reports bad credentials after the upgrade, as a 4001/4002 close.
      var auth = event.code === 4001 || event.code === 4002
        ? { code: event.reason || 'token_invalid', message: 'the gateway refused the token' }
        : null;
      if (!self.proven) {
        cancel(timer);
        if (!self.dead) { self.close(); done(opened ? 'closed' : 'refused', auth); }
        return;
      }
      self.dead = true;
      var hint = /retry_ms=(\d+)/.exec(event.reason || '');
      client._down(self, {
        reason: auth ? auth.code : CLOSE_REASONS[event.code] || 'closed',
        retryMs: hint ? parseInt(hint[1], 10) : null,
        auth: auth
      });
    };
    this.ws.onerror = noop; // close follows
  };

  WebSocketRung.prototype.send = function (frame) {
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch (e) {
      return false;
    }
  };

  WebSocketRung.prototype.frame = function (frame) {
    var client = this.client;
    switch (frame.op) {
      case 'message': client._message(frame); break;
      case 'gap': client._gap(frame); break;
      case 'subscribed':
        // The backend subscribed this user (POST /subscribe): a subscription like any.
        if (frame.server) { client._serverSubscribed(frame.channels); }
        this.refused(frame.refused);
        client._startAt(frame.cursor);
        break;
      case 'unsubscribed':
        if (frame.server) { client._serverUnsubscribed(frame.channels); }
        break;
      case 'presence':
        client._acked(frame.id, null, { channel: frame.channel, clients: frame.clients });
        break;
      case 'ack':
        client._acked(frame.id, null, { channel: frame.channel, epoch: frame.epoch, offset: frame.offset });
        break;
      case 'rpc_result':
        client._acked(frame.id, null, frame.result);
        break;
      case 'session':
        client._session(frame);
        break;
      case 'error':
        if (frame.id !== undefined && frame.id !== null) {
          client._acked(frame.id, { code: frame.code, message: frame.message }, null);
        } else if (!this.refused(frame.refused)) {
          client._emit('error', { code: frame.code, message: frame.message });
        }
        break;
      default: break;
    }
  };

  /**
   * Forgets the channels the gateway refused (the socket follows none of them), and has
   * the client drop them; false when none of them was the client's.
   */
  WebSocketRung.prototype.refused = function (list) {
    this.channels = without(this.channels, list);
    return this.client._refused(list) > 0;
  };

  /** Channel changes travel as frames on the open socket (or with the first subscribe). */
  WebSocketRung.prototype.sync = function () {
    if (this.ws && this.ws.readyState === 1) { this.resync(); }
    return true;
  };

  /** Sends the subscribe/unsubscribe frames that match the client's channels; true if any. */
  WebSocketRung.prototype.resync = function () {
    var wanted = this.client._channels(), had = this.channels, added = [], removed = [], i;
    for (i = 0; i < wanted.length; i++) {
      if (had.indexOf(wanted[i]) < 0) { added.push(wanted[i]); }
    }
    for (i = 0; i < had.length; i++) {
      if (wanted.indexOf(had[i]) < 0) { removed.push(had[i]); }
    }
    this.channels = wanted;
    if (removed.length) { this.send({ op: 'unsubscribe', channels: removed }); }
    if (added.length) { this.send({ op: 'subscribe', channels: added, cursor: this.client._cursor(added) }); }
    return added.length > 0 || removed.length > 0;
  };

  WebSocketRung.prototype.publish = function (id, channel, data) {
    return this.send({ op: 'publish', channel: channel, data: data, id: id });
  };

  WebSocketRung.prototype.rpc = function (id, method, params) {
    return this.send({ op: 'rpc', id: id, method: method, params: params });
  };

  WebSocketRung.prototype.close = function () {
    this.dead = true;
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = noop;
      try { this.ws.close(1000); } catch (e) { /* already closed */ }
    }
  };

  function SseRung(client, spec) {
    this.name = 'sse';
    this.client = client;
    this.spec = spec;
    this.es = null;
    this.dead = false;
    this.proven = false;
    this.channels = client._channels();
  }

  SseRung.prototype.open = function (done) {
    var self = this, client = this.client, headers = false, timer = null;
    function fail(reason) {
      if (self.dead || self.proven) { return; }
      cancel(timer);
      self.close();
      done(reason);
    }
    function down(info) {
      if (self.dead) { return; }
      self.close();
      client._down(self, info);
    }
    if (!client._supported('sse')) { later(function () { fail('unsupported'); }, 0); return; }
    if (!this.channels.length) {
      // Nothing to stream yet: idle until a channel is added (sync() then asks for a new stream).
      this.idle = true;
      later(function () { if (!self.dead) { self.proven = true; done(null); } }, 0);
      return;
    }
    var url = withQuery(client._url(this.spec.url), {
      channels: this.channels.join(','),
      cursor: client._cursor(this.channels)
    });
    try {
      this.es = new root.EventSource(url);
    } catch (e) {
      later(function () { fail('refused'); }, 0);
      return;
    }
    // The gateway writes its headers and an `open` event at once, and /negotiate has just
    // shown it reachable: when the event does not come, something in between is holding
    // the response back. Whether or not it let the headers through, that is a buffer.
    timer = this.timer = deadline(function () { fail('buffered'); }, client.options.timeouts.sse);
    this.es.addEventListener('open', function (event) {
      if (self.dead) { return; }
      if (event.data === undefined) { headers = true; return; } // the browser's own open
      var body = parse(event.data);
      if (!self.proven) {
        self.proven = true;
        cancel(timer);
        // The stream follows the others: it is no reason to open a new one.
        self.channels = without(self.channels, body && body.refused);
        client._session(body);
        client._refused(body && body.refused);
        // Channels the server subscribed this client to (its connect hook's, or the
        // server API's lately): followed like its own.
        client._serverSubscribed((body && body.subscribed) || []);
        client._serverUnsubscribed((body && body.unsubscribed) || []);
        client._startAt(body && body.cursor);
        done(null);
      }
    });
    this.es.onmessage = function (event) {
      if (self.dead) { return; }
      var message = parse(event.data);
      if (message) { client._message(message); }
    };
    this.es.addEventListener('subscribed', function (event) {
      var body = parse(event.data) || {};
      if (!self.dead && body.server) { client._serverSubscribed(body.channels || []); }
    });
    this.es.addEventListener('unsubscribed', function (event) {
      var body = parse(event.data) || {};
      if (!self.dead && body.server) { client._serverUnsubscribed(body.channels || []); }
    });
    this.es.addEventListener('gap', function (event) {
      if (self.dead) { return; }
      var gap = parse(event.data);
      if (gap) { client._gap(gap); }
    });
    this.es.addEventListener('reconnect', function (event) {
      var body = parse(event.data) || {};
      down({ reason: 'shutdown', retryMs: typeof body.retry_ms === 'number' ? body.retry_ms : null });
    });
    this.es.addEventListener('error', function (event) {
      if (self.dead) { return; }
      if (event.data !== undefined) {
        // The gateway's own `error` event, e.g. {"code":"slow_consumer"}.
        var body = parse(event.data) || {};
        down({ reason: body.code || 'error', retryMs: null });
        return;
      }
      if (!self.proven) {
        self.ask(headers ? 'closed' : 'refused', fail, done);
      } else {
        // The browser would reconnect by itself; the client does it, with its own cursor.
        down({ reason: 'closed', retryMs: null });
      }
    });
  };

  /**
   * The stream failed before its `open` event, and an EventSource cannot read why. Asks
   * GET /poll once, with the same channels and credentials: a refusal naming channels
   * drops them (they were all refused: any allowed one would have opened the stream) and
   * leaves this rung idle, proven; refused credentials are no transport failure either;
   * anything else is `fail(reason)`, as before.
   */
  SseRung.prototype.ask = function (reason, fail, done) {
    var self = this, client = this.client;
    // Closed first: the EventSource would retry by itself, and the deadline no longer
    // measures the stream.
    if (this.es) {
      try { this.es.close(); } catch (e) { /* already closed */ }
    }
    cancel(this.timer);
    var url = withQuery(client._url('/poll'), {
      channels: this.channels.join(','),
      cursor: client._cursor(this.channels)
    });
    this.asking = request('GET', url, null, client.options.timeouts.poll, function (err) {
      self.asking = null;
      if (self.dead || self.proven) { return; }
      var auth = err && (err.status === 401 || err.status === 403);
      if (auth && err.refused && err.refused.length) {
        self.channels = without(self.channels, err.refused);
        if (client._refused(err.refused) > 0 && !self.channels.length) {
          self.idle = true;
          self.proven = true;
          done(null);
          return;
        }
      }
      if (auth) {
        self.close();
        done(reason, { code: err.code, message: err.message });
        return;
      }
      fail(reason);
    });
  };

  /** A stream's channels are fixed by its URL: a change needs a new stream. */
  SseRung.prototype.sync = function () {
    return this.channels.join(',') === this.client._channels().join(',');
  };

  SseRung.prototype.close = function () {
    this.dead = true;
    cancel(this.timer);
    if (this.asking) { this.asking.abort(); this.asking = null; }
    if (this.es) {
      try { this.es.close(); } catch (e) { /* already closed */ }
    }
  };

  /** Long polling (`held` true) and short polling share one loop. */
  function PollRung(client, spec, held) {
    this.name = held ? 'longpoll' : 'poll';
    this.client = client;
    this.spec = spec;
    this.held = held;
    this.dead = false;
    this.proven = false;
    this.inflight = null;
    this.timer = null;
    this.channels = [];
  }

  PollRung.prototype.open = function (done) {
    var self = this;
    if (!this.client._supported(this.name)) { later(function () { done('unsupported'); }, 0); return; }
    this.onProven = function () { self.proven = true; done(null); };
    this.onFailed = function (reason, auth) { self.close(); done(reason, auth); };
    this.next(0);
  };

  /** Issues the next request after `delay` ms. */
  PollRung.prototype.next = function (delay) {
    var self = this;
    cancel(this.timer);
    this.timer = null;
    // One request at a time: a re-ask (sync) while an answer is being handled would
    // otherwise leave a second poll parked at the gateway.
    if (this.inflight) { this.inflight.abort(); this.inflight = null; }
    if (delay > 0) {
      this.timer = later(function () { self.timer = null; self.next(0); }, delay);
      return;
    }
    var client = this.client;
    this.channels = client._channels();
    if (!this.channels.length) {
      // Nothing to ask for; the HTTP path is proven by /negotiate. Resumes on sync().
      if (!this.proven) {
        this.idle = true;
        later(function () { if (!self.dead && !self.proven) { self.onProven(); } }, 0);
      }
      return;
    }
    var params = { channels: this.channels.join(','), cursor: client._cursor(this.channels) };
    var timeoutMs = client.options.timeouts[this.name];
    // Read per request: the rung may have started before /negotiate gave the real values.
    var spec = client._spec(this.name) || this.spec;
    if (this.held) {
      // The first poll asks for an immediate answer: that is what proves the rung.
      var hold = this.proven ? Math.max(1, Math.round((spec.timeout_ms || 25000) / 1000)) : 0;
      params.timeout = hold;
      timeoutMs += hold * 1000;
    }
    var url = withQuery(client._url(this.spec.url), params);
    var handle = request('GET', url, null, timeoutMs, function (err, body) {
      if (self.dead || self.inflight !== handle) { return; }
      self.inflight = null;
      if (err) {
        var auth = err.status === 401 || err.status === 403 ? { code: err.code, message: err.message } : null;
        if (auth && client._refused(err.refused) > 0) {
          // Every channel asked was refused and is dropped: ask again for what is left
          // (nothing at all leaves the rung idle, proven).
          self.next(0);
          return;
        }
        if (!self.proven) {
          self.onFailed(err.code === 'timeout' ? 'timeout' : 'refused', auth);
        } else {
          self.close();
          client._down(self, { reason: err.code, retryMs: null, auth: auth });
        }
        return;
      }
      client._session(body);
      client._refused(body.refused);
      // The backend subscribed or unsubscribed this user (POST /subscribe): the answer
      // already carries the new channels' messages and positions.
      client._serverSubscribed(body.subscribed || []);
      client._serverUnsubscribed(body.unsubscribed || []);
      client._polled(body);
      if (!self.proven) { self.onProven(); }
      if (self.dead) { return; }
      if (typeof body.retry_ms === 'number') {
        // The gateway is draining: come back after the delay it chose.
        self.close();
        client._down(self, { reason: 'shutdown', retryMs: body.retry_ms });
        return;
      }
      self.next(self.held ? 0 : ((client._spec(self.name) || self.spec).interval_ms || 2000));
    });
    this.inflight = handle;
  };

  /** Re-asks at once with the client's channels (an answer in flight is simply dropped). */
  PollRung.prototype.sync = function () {
    if (this.dead || !this.proven) { return true; }
    if (this.channels.join(',') === this.client._channels().join(',')) { return true; }
    if (this.inflight) { this.inflight.abort(); this.inflight = null; }
    this.next(0);
    return true;
  };

  PollRung.prototype.close = function () {
    this.dead = true;
    cancel(this.timer);
    if (this.inflight) { this.inflight.abort(); this.inflight = null; }
  };

  var RUNGS = {
    websocket: function (client, spec) { return new WebSocketRung(client, spec); },
    sse: function (client, spec) { return new SseRung(client, spec); },
    longpoll: function (client, spec) { return new PollRung(client, spec, true); },
    poll: function (client, spec) { return new PollRung(client, spec, false); }
  };

  // ---------------------------------------------------------------------------------------
  // The client

  /** A connection to a gateway; create it with Cascade.connect(url, options). */
  function Client(url, options) {
    options = options || {};
    this.options = merge(DEFAULTS, options);
    this.options.timeouts = merge(DEFAULTS.timeouts, options.timeouts);
    this.base = resolveBase(url);
    this.token = options.token || null;
    // Extra query parameters on every request: what a backend's connect hook reads.
    this.query = options.query || null;
    this.getToken = typeof options.getToken === 'function' ? options.getToken : null;
    // Whether the next connection attempt asks getToken first: at the start without a
    // token, and whenever the gateway said the token expired.
    this.tokenStale = !this.token && !!this.getToken;
    this.renewing = false;
    this.allowed = options.transports && options.transports.length ? options.transports.slice() : null;
    /** The name of the rung in use, or null while disconnected. */
    this.transport = null;
    this.lastTransport = null;
    this.ladder = DEFAULT_LADDER.slice();
    this.subs = {};        // channel -> [handler]
    this.order = [];       // subscribed channels, in subscription order
    this.pos = {};         // channel -> {epoch, offset}: the last position the application saw
    this.retired = {};     // channel -> {epoch: true}: epochs left behind after a gap
    this.handlers = {};    // event -> [handler]
    this.active = null;    // the rung in use
    this.probe = null;     // a rung being tried while another is in use (climb or replace)
    this.cycle = null;     // the connection attempt in progress, when no rung is in use
    this.failed = {};      // rung -> reason, not yet reported to /negotiate
    this.reported = {};    // rung -> reason, already reported
    this.unsupported = {}; // rungs this browser lacks (reported once)
    this.worked = {};      // rungs that carried this client's subscription at some point
    this.attempt = 0;      // reconnect attempts since a rung last worked
    this.reconnectTimer = null;
    this.probeTimer = null;
    this.pending = {};     // publish or rpc id -> {callback, timer, rung}
    this.draining = [];    // rungs replaced with answers still owed on them (see _retire)
    // The client session the gateway began (with backend hooks): its id, and the value
    // sent back with every request so that a poll is not a new session.
    this.clientId = null;
    this.session = null;
    this.nextId = 1;
    this.closed = false;
    this.connected = false;
    this.tabId = randomId();
    this.lacks = {};       // rungs the tabs' browser lacks, for a hub's connection in a worker
    this.storage = null;   // where the last rung is remembered, when not sessionStorage
    this.link = undefined; // to the hub of a shared connection: undefined until tried, null for none
    this.standby = null;   // the SharedRung waiting for the hub's connection while this tab uses its own
    this.tabLock = null;   // the Web Lock that tells hubs this tab lives (see tabPost)
    /** How the connection is shared: 'worker', 'leader' (this tab runs it), 'follower', or null. */
    this.shareRole = null;
    var channels = options.channels || [];
    for (var i = 0; i < channels.length; i++) { this._add(channels[i]); }
    var self = this;
    later(function () { self._connect(); }, 0);
  }

  /** Calls `fn(data, message)` for every message on `channel`, from now on. */
  Client.prototype.subscribe = function (channel, fn) {
    this._add(channel);
    if (typeof fn === 'function') { this.subs[channel].push(fn); }
    this._sync();
    return this;
  };

  /** Removes `fn` (or every handler) from `channel`; the last one leaves the channel. */
  Client.prototype.unsubscribe = function (channel, fn) {
    if (!has(this.subs, channel)) { return this; }
    var list = this.subs[channel];
    if (typeof fn === 'function') {
      var at = list.indexOf(fn);
      if (at >= 0) { list.splice(at, 1); }
      if (list.length) { return this; }
    }
    this._drop(channel);
    this._sync();
    return this;
  };

  /**
   * Publishes `data` (any JSON value) to `channel`; `callback(err, {channel, epoch, offset})`.
   * Over a WebSocket when one is in use, else with POST /publish.
   */
  Client.prototype.publish = function (channel, data, callback) {
    var self = this, done = typeof callback === 'function' ? callback : noop;
    if (this.closed) {
      later(function () { done({ code: 'closed', message: 'the client is closed' }); }, 0);
      return this;
    }
    var rung = this.active;
    if (rung && rung.name === 'websocket' && rung.publish) {
      var id = this.nextId++;
      var timer = deadline(function () {
        self._acked(id, { code: 'timeout', message: 'no acknowledgement in time' }, null);
      }, this.options.timeouts.publish);
      this.pending[id] = { callback: done, timer: timer, rung: rung };
      if (rung.publish(id, channel, data)) { return this; }
      cancel(timer);
      delete this.pending[id];
    }
    request('POST', this._url('/publish'), JSON.stringify({ channel: channel, data: data }),
      this.options.timeouts.publish, function (err, body) {
        if (err) { done(err); } else { done(null, body); }
      });
    return this;
  };

  /**
   * Calls the application's backend: `method` with `params` (any JSON value), answered
   * with the backend's result. Over a WebSocket when one is in use, else with POST /rpc.
   * With `callback(err, result)`, returns the client; without, a Promise of the result
   * (where the browser has Promise).
   */
  Client.prototype.rpc = function (method, params, callback) {
    var self = this;
    if (typeof callback !== 'function' && typeof root.Promise === 'function') {
      return new root.Promise(function (resolve, reject) {
        self.rpc(method, params, function (err, result) {
          if (err) { reject(err); } else { resolve(result); }
        });
      });
    }
    var done = typeof callback === 'function' ? callback : noop;
    if (params === undefined) { params = null; }
    if (this.closed) {
      later(function () { done({ code: 'closed', message: 'the client is closed' }); }, 0);
      return this;
    }
    var rung = this.active;
    if (rung && rung.name === 'websocket' && rung.rpc) {
      var id = this.nextId++;
      var timer = later(function () {
        self._acked(id, { code: 'timeout', message: 'no answer in time' }, null);
      }, this.options.timeouts.rpc);
      this.pending[id] = { callback: done, timer: timer, rung: rung };
      if (rung.rpc(id, method, params)) { return this; }
      cancel(timer);
      delete this.pending[id];
    }
    request('POST', this._url('/rpc'), JSON.stringify({ method: method, params: params }),
      this.options.timeouts.rpc, function (err, body) {
        if (err) { done(err); } else { done(null, body && body.result); }
      });
    return this;
  };

  /**
   * Who is in `channel`: `callback(err, {channel, clients: [{user, client, transport}]})`.
   * Over the WebSocket when one is in use, else with GET /presence. The channel's
   * namespace must keep presence, and the client be allowed to read it.
   */
  Client.prototype.presence = function (channel, callback) {
    var self = this, done = typeof callback === 'function' ? callback : noop;
    var rung = this.active;
    if (rung && rung.name === 'websocket' && rung.send) {
      var id = this.nextId++;
      var timer = later(function () {
        self._acked(id, { code: 'timeout', message: 'no answer in time' }, null);
      }, this.options.timeouts.publish);
      this.pending[id] = { callback: done, timer: timer, rung: rung };
      if (rung.send({ op: 'presence', id: id, channel: channel }) !== false) { return this; }
      cancel(timer);
      delete this.pending[id];
    }
    request('GET', this._url('/presence?channel=' + encodeURIComponent(channel)), null,
      this.options.timeouts.publish, function (err, body) {
        if (err) { done(err); } else { done(null, body); }
      });
    return this;
  };

  /** A channel the backend subscribed this user to: it appears as a subscription. */
  Client.prototype._serverSubscribed = function (channels) {
    for (var i = 0; i < channels.length; i++) {
      if (!has(this.subs, channels[i])) {
        this._add(channels[i]);
        this._emit('subscribed', { channel: channels[i], server: true });
      }
    }
  };

  /** A channel the backend unsubscribed this user from. */
  Client.prototype._serverUnsubscribed = function (channels) {
    for (var i = 0; i < channels.length; i++) {
      if (has(this.subs, channels[i])) {
        this._drop(channels[i]);
        this._emit('unsubscribed', { channel: channels[i], server: true });
      }
    }
  };

  /** Adds a handler for connect, disconnect, transport, gap, error, message, session, subscribed or unsubscribed. */
  Client.prototype.on = function (event, fn) {
    (this.handlers[event] = this.handlers[event] || []).push(fn);
    return this;
  };

  /** Removes a handler added with on(). */
  Client.prototype.off = function (event, fn) {
    var list = this.handlers[event] || [], at = list.indexOf(fn);
    if (at >= 0) { list.splice(at, 1); }
    return this;
  };

  /** Closes every connection and stops reconnecting. */
  Client.prototype.close = function () {
    if (this.closed) { return; }
    this.closed = true;
    cancel(this.reconnectTimer);
    cancel(this.probeTimer);
    this._endCycle();
    if (this.probe) { this.probe.close(); this.probe = null; }
    if (this.standby) { this.standby.close(); this.standby = null; }
    var wasConnected = this.connected;
    if (this.active) { this.active.close(); this.active = null; }
    while (this.draining.length) { this.draining.pop().close(); }
    this.transport = null;
    this.connected = false;
    this._failPending('closed');
    if (wasConnected) { this._emit('disconnect', { reason: 'closed', retryMs: null }); }
  };

  // --- channels and positions ------------------------------------------------------------

  Client.prototype._add = function (channel) {
    if (typeof channel !== 'string' || !CHANNEL.test(channel)) {
      throw new Error('Cascade: bad channel name ' + JSON.stringify(channel) +
        ': use 1 to 128 of A-Z a-z 0-9 _ - . : /');
    }
    if (!has(this.subs, channel)) {
      this.subs[channel] = [];
      this.order.push(channel);
    }
  };

  /** Forgets `channel`, its handlers and its position. */
  Client.prototype._drop = function (channel) {
    delete this.subs[channel];
    delete this.pos[channel];
    delete this.retired[channel];
    this.order.splice(this.order.indexOf(channel), 1);
  };

  /**
   * The gateway refused these channels ([{channel, code}], its `refused` list) and serves
   * the others: each one still subscribed is dropped and reported as an `error` naming it.
   * A refusal is no transport failure: the rungs stay as they are. Returns how many were
   * dropped.
   */
  Client.prototype._refused = function (list) {
    var dropped = [], i;
    if (!list || !list.length) { return 0; }
    for (i = 0; i < list.length; i++) {
      var channel = list[i] && list[i].channel;
      if (typeof channel === 'string' && has(this.subs, channel)) {
        this._drop(channel);
        dropped.push({ channel: channel, code: String(list[i].code || 'forbidden') });
      }
    }
    // Reported once all are dropped, so that a handler sees the client's new set.
    for (i = 0; i < dropped.length; i++) {
      var refusal = dropped[i];
      this._emit('error', {
        code: refusal.code,
        message: (refusal.code === 'token_invalid' ? 'a token is needed to subscribe to '
          : 'not allowed to subscribe to ') + refusal.channel,
        channel: refusal.channel
      });
    }
    return dropped.length;
  };

  Client.prototype._channels = function () { return this.order.slice(); };

  /** The cursor for `channels`: a position where one is known, else "from now on". */
  Client.prototype._cursor = function (channels) {
    var parts = [];
    for (var i = 0; i < channels.length; i++) {
      var p = this.pos[channels[i]];
      parts.push(p ? channels[i] + '@' + p.epoch + ':' + p.offset : channels[i]);
    }
    return parts.join(',');
  };

  /** Takes the starting positions a rung reports, for channels that had none yet. */
  Client.prototype._startAt = function (cursor) {
    if (typeof cursor !== 'string' || !cursor) { return; }
    var entries = cursor.split(',');
    for (var i = 0; i < entries.length; i++) {
      var m = /^([^@]+)@([A-Za-z0-9]+):(\d+)$/.exec(entries[i]);
      if (m && has(this.subs, m[1]) && !this.pos[m[1]]) {
        this.pos[m[1]] = { epoch: m[2], offset: parseInt(m[3], 10) };
        this._positioned();
      }
    }
  };

  /** Called when a channel gets its first position (a hub answers the tabs waiting on it). */
  Client.prototype._positioned = noop;

  /**
   * Hands a message to the application unless it already has it. Every rung delivers a
   * contiguous run from the cursor it was given, so "newer than the last one seen" is
   * exactly "the next one": nothing is skipped, duplicated or reordered across rungs.
   */
  Client.prototype._message = function (m) {
    var channel = m && m.channel;
    if (!channel || !has(this.subs, channel) || typeof m.offset !== 'number') { return; }
    var p = this.pos[channel];
    if (p) {
      if (m.epoch === p.epoch) {
        if (m.offset <= p.offset) { return; }
      } else {
        if (this.retired[channel] && this.retired[channel][m.epoch]) { return; }
        // A new history without an announced gap: announce it, then take the message.
        this._gap({ channel: channel, epoch: m.epoch, first: m.offset });
      }
    }
    this.pos[channel] = { epoch: m.epoch, offset: m.offset };
    var list = this.subs[channel].slice();
    for (var i = 0; i < list.length; i++) { safely(list[i], this, [m.data, m]); }
    this._emit('message', m);
    // After the message went out: a tab told this position first would drop the message.
    if (!p) { this._positioned(); }
  };

  /** The history the application was reading is gone: continue from `first`. */
  Client.prototype._gap = function (gap) {
    var channel = gap && gap.channel;
    if (!channel || !has(this.subs, channel)) { return; }
    var p = this.pos[channel];
    var retired = this.retired[channel] || (this.retired[channel] = {});
    if (retired[gap.epoch]) { return; }
    if (p && p.epoch === gap.epoch && gap.first - 1 <= p.offset) { return; } // already past it
    if (p && p.epoch !== gap.epoch) { retired[p.epoch] = true; }
    this.pos[channel] = { epoch: gap.epoch, offset: Math.max(0, gap.first - 1) };
    this._emit('gap', { channel: channel, epoch: gap.epoch, first: gap.first });
    if (!p) { this._positioned(); }
  };

  /** A polling answer: gaps come before the messages that follow them. */
  Client.prototype._polled = function (body) {
    var i, gaps = body.gaps || [], messages = body.messages || [];
    for (i = 0; i < gaps.length; i++) { this._gap(gaps[i]); }
    for (i = 0; i < messages.length; i++) { this._message(messages[i]); }
    this._startAt(body.cursor);
  };

  Client.prototype._acked = function (id, err, position) {
    var entry = this.pending[id];
    if (!entry) { return; }
    delete this.pending[id];
    cancel(entry.timer);
    safely(entry.callback, this, [err, position]);
    if (entry.rung && this.draining.indexOf(entry.rung) >= 0 && !this._owed(entry.rung)) {
      this._drained(entry.rung);
    }
  };

  /** Whether answers are still owed on `rung` (publishes, rpcs sent on it). */
  Client.prototype._owed = function (rung) {
    for (var id in this.pending) {
      if (has(this.pending, id) && this.pending[id].rung === rung) { return true; }
    }
    return false;
  };

  /**
   * Closes `rung`, which another replaced, or keeps it open (delivering into the dedupe
   * like any) until the answers owed on it came or their deadline passed: the protocol
   * has no idempotency key, so a publish cannot be sent again elsewhere without the risk
   * of a duplicate, and closing the socket would lose its acknowledgement.
   */
  Client.prototype._retire = function (rung) {
    if (!this._owed(rung)) { rung.close(); return; }
    var self = this;
    this.draining.push(rung);
    rung.drainTimer = later(function () { self._drained(rung); }, this.options.timeouts.publish);
  };

  /** A replaced rung is done: closed, and what it still owed fails. */
  Client.prototype._drained = function (rung) {
    var at = this.draining.indexOf(rung);
    if (at < 0) { return; }
    this.draining.splice(at, 1);
    cancel(rung.drainTimer);
    rung.close();
    for (var id in this.pending) {
      if (has(this.pending, id) && this.pending[id].rung === rung) {
        this._acked(id, { code: 'disconnected', message: 'the connection ended before the acknowledgement' }, null);
      }
    }
  };

  /** Fails what is owed on the connection in use; a replaced rung still draining answers its own. */
  Client.prototype._failPending = function (code) {
    var ids = Object.keys(this.pending);
    for (var i = 0; i < ids.length; i++) {
      var entry = this.pending[ids[i]];
      if (!entry || (code !== 'closed' && entry.rung && this.draining.indexOf(entry.rung) >= 0)) { continue; }
      this._acked(ids[i], { code: code, message: 'the connection ended before the acknowledgement' }, null);
    }
  };

  Client.prototype._emit = function (event) {
    var args = Array.prototype.slice.call(arguments, 1);
    var list = (this.handlers[event] || []).slice();
    for (var i = 0; i < list.length; i++) { safely(list[i], this, args); }
  };

  // --- URLs ----------------------------------------------------------------------------

  Client.prototype._url = function (path) {
    var url = /^https?:\/\//i.test(path) ? path : this.base + path;
    if (this.query) { url = withQuery(url, this.query); }
    if (this.session) { url = withQuery(url, { session: this.session }); }
    return this.token ? withQuery(url, { token: this.token }) : url;
  };

  /** Keeps the client session a gateway's answer began, if it began one. */
  Client.prototype._session = function (body) {
    if (!body || typeof body.session !== 'string') { return; }
    this.session = body.session;
    if (this.clientId !== body.client) {
      this.clientId = body.client;
      this._emit('session', body.client);
    }
  };

  Client.prototype._wsUrl = function (path) {
    return this._url(path).replace(/^http/i, 'ws');
  };

  // --- negotiation and the ladder --------------------------------------------------------

  /** The server's description of rung `name`, if it offers it. */
  Client.prototype._spec = function (name) {
    var at = indexOfName(this.ladder, name);
    return at < 0 ? null : this.ladder[at];
  };

  /** The rungs this client may use, best first, from the server's ladder. */
  Client.prototype._candidates = function () {
    var out = [];
    for (var i = 0; i < this.ladder.length; i++) {
      var spec = this.ladder[i];
      if (!RUNGS[spec.name]) { continue; }
      if (this.allowed && this.allowed.indexOf(spec.name) < 0) { continue; }
      if (!this._supported(spec.name)) {
        // Reported once: it will not change while the page lives.
        if (!has(this.reported, spec.name) && !this.unsupported[spec.name]) {
          this.unsupported[spec.name] = true;
          this.failed[spec.name] = 'unsupported';
        }
        continue;
      }
      out.push(spec);
    }
    return out;
  };

  /**
   * GET /negotiate, reporting the rungs that failed since the last report. A report in
   * flight is not repeated; one that does not arrive is sent again with the next request.
   */
  Client.prototype._negotiate = function (done) {
    var self = this, failed = [], sending = {}, name;
    for (name in this.failed) {
      if (has(this.failed, name)) {
        failed.push(name + ':' + this.failed[name]);
        sending[name] = this.failed[name];
        delete this.failed[name];
      }
    }
    var url = withQuery(this._url('/negotiate'), { failed: failed.join(',') });
    return request('GET', url, null, this.options.timeouts.negotiate, function (err, body) {
      var ok = !err && body && body.transports && body.transports.length;
      for (var n in sending) {
        if (has(sending, n)) {
          if (ok) {
            self.reported[n] = sending[n];
          } else if (!has(self.failed, n)) {
            self.failed[n] = sending[n];
          }
        }
      }
      if (ok) {
        self.ladder = body.transports;
        done(null);
      } else {
        done(err || { code: 'bad_negotiate', message: 'no transports offered', status: 0 });
      }
    });
  };

  Client.prototype._remembered = function () {
    var s = this.options.remember && (this.storage || storage());
    try { return s ? s.getItem('cascade.transport ' + this.base) : null; } catch (e) { return null; }
  };

  Client.prototype._remember = function (name) {
    var s = this.options.remember && (this.storage || storage());
    try { if (s) { s.setItem('cascade.transport ' + this.base, name); } } catch (e) { /* full or denied */ }
  };

  /**
   * One connection attempt: /negotiate and the first rung start together, so a WebSocket
   * that works is not delayed by the negotiate round trip. A rung that fails makes way for
   * the next one down, but only once /negotiate has shown the gateway itself is reachable:
   * when it is down, every rung fails and none of them is to blame. While a streaming rung
   * has not proven itself, long polling races it (see `raceDelayMs` and `_race`).
   */
  Client.prototype._connect = function () {
    if (this.closed || this.active || this.cycle) { return; }
    if (this.link === undefined) {
      this.link = this._shareLink();
      if (this.link && this.link.hubAlive) {
        this._lookForHub();
        return;
      }
    }
    if (this.link && !this.standby) {
      this._connectShared();
      return;
    }
    if (this.tokenStale) {
      this._renewToken();
      return;
    }
    var self = this;
    var candidates = this._candidates();
    var remembered = this._remembered();
    var start = indexOfName(candidates, remembered);
    var cycle = {
      negotiate: 'pending',
      tried: {},
      floor: start < 0 ? 0 : start, // rungs above the starting one are tried last
      rung: null,
      failure: null,
      request: null,
      racer: null,        // the long poll carrying the subscription while the stream proves itself
      racerFailure: null,
      raceTimer: null,
      raceWaiting: false, // the head start is over but /negotiate has not answered yet
      startedAt: Date.now(),
      negotiateMs: null,
      rungStartedAt: null
    };
    this.cycle = cycle;
    cycle.request = this._negotiate(function (err) {
      if (self.cycle !== cycle) { return; }
      cycle.request = null;
      cycle.negotiate = err ? 'failed' : 'ok';
      cycle.negotiateMs = Date.now() - cycle.startedAt;
      if (cycle.raceWaiting && !err) {
        cycle.raceWaiting = false;
        self._race(cycle);
      }
      if (!err) {
        // The server's ladder may place the rung being tried elsewhere, or not offer it.
        var current = cycle.rung ? cycle.rung.name : (cycle.failure ? cycle.failure.name : null);
        cycle.floor = current ? Math.max(0, indexOfName(self._candidates(), current)) : 0;
      } else {
        cycle.error = err;
      }
      self._step(cycle);
    });
    if (candidates.length) {
      this._try(cycle, candidates[cycle.floor]);
    }
  };

  Client.prototype._try = function (cycle, spec) {
    var self = this, rung = RUNGS[spec.name](this, spec);
    cycle.tried[spec.name] = true;
    cycle.rung = rung;
    cycle.rungStartedAt = Date.now();
    this._armRace(cycle, spec.name);
    rung.open(function (reason, auth) {
      if (self.cycle !== cycle || cycle.rung !== rung) { rung.close(); return; }
      cycle.rung = null;
      if (reason === null) {
        self._endCycle();
        self._promote(rung);
      } else {
        cycle.failure = { name: rung.name, reason: reason, auth: auth || null };
        self._step(cycle);
      }
    });
  };

  /**
   * Gives the streaming rung `name` its head start, after which long polling (when the
   * gateway offers it below `name`) starts beside it. Each streaming rung gets a head start
   * of its own: a WebSocket refused at once leaves SSE the same chance to prove itself.
   * A rung that already worked for this client, or in this tab before a reload, is trusted
   * to work again: reconnecting to it (after a gateway restart, say) races nothing.
   * The head start is at least three /negotiate round trips (see `_race`): a stream needs
   * about that many to prove itself, so a slow network does not race every page load.
   */
  Client.prototype._armRace = function (cycle, name) {
    var delay = this.options.raceDelayMs, self = this;
    cancel(cycle.raceTimer);
    cycle.raceTimer = null;
    cycle.raceWaiting = false;
    if (cycle.racer || cycle.racerFailure || typeof delay !== 'number' || delay < 0) { return; }
    if (name !== 'websocket' && name !== 'sse') { return; }
    if (this.worked[name] || this._remembered() === name) { return; }
    cycle.raceTimer = later(function () {
      cycle.raceTimer = null;
      self._race(cycle);
    }, delay);
  };

  /**
   * Starts long polling beside the stream being tried. It carries the subscription from
   * the client's cursor, so whichever rung delivers first, the dedupe shows the application
   * each message once and in order; once proven it is the rung in use until the stream
   * proves itself (then it is closed) or every better rung failed (then it stays).
   */
  Client.prototype._race = function (cycle) {
    if (this.closed || this.cycle !== cycle || cycle.racer || !cycle.rung) { return; }
    if (cycle.negotiate !== 'ok') {
      // Long polling is raced only once the gateway answered (else nothing would work).
      cycle.raceWaiting = cycle.negotiate === 'pending';
      return;
    }
    var self = this;
    var headStart = Math.max(this.options.raceDelayMs, RACE_ROUND_TRIPS * cycle.negotiateMs);
    var wait = cycle.rungStartedAt + headStart - Date.now();
    if (wait > 0) {
      cycle.raceTimer = later(function () {
        cycle.raceTimer = null;
        self._race(cycle);
      }, wait);
      return;
    }
    var candidates = this._candidates();
    var at = indexOfName(candidates, 'longpoll');
    if (at < 0 || at <= indexOfName(candidates, cycle.rung.name) || cycle.tried.longpoll) { return; }
    var racer = RUNGS.longpoll(this, candidates[at]);
    cycle.tried.longpoll = true;
    cycle.racer = racer;
    racer.racing = true;
    racer.open(function (reason, auth) {
      if (self.cycle !== cycle || cycle.racer !== racer) { racer.close(); return; }
      if (reason === null) {
        self._promote(racer);
        // The rungs above it may all have failed while it proved itself: that settles it.
        self._step(cycle);
      } else {
        cycle.racer = null;
        cycle.racerFailure = { name: racer.name, reason: reason, auth: auth || null };
        self._step(cycle);
      }
    });
  };

  /** Decides what a cycle does next, whenever negotiation or a rung attempt settles. */
  Client.prototype._step = function (cycle) {
    if (this.closed || this.cycle !== cycle) { return; }
    var candidates = cycle.negotiate === 'ok' ? this._candidates() : null;
    if (cycle.rung) {
      // Still trying; drop the attempt if the gateway does not offer that rung.
      if (candidates && indexOfName(candidates, cycle.rung.name) < 0) {
        cycle.rung.close();
        cycle.rung = null;
      } else {
        return;
      }
    }
    if (cycle.racerFailure && cycle.racerFailure.auth && !cycle.failure) {
      cycle.failure = cycle.racerFailure;
      cycle.racerFailure = null;
    }
    if (cycle.failure && cycle.failure.auth) {
      // Refused credentials are the application's to fix (or getToken's, for an expired
      // token); falling to another rung would only be refused again, and would blame the
      // network for it.
      this._retry(null, this._renewable(cycle.failure.auth) ? null : cycle.failure.auth);
      return;
    }
    if (cycle.negotiate === 'pending') { return; }
    if (cycle.negotiate === 'failed') {
      if (cycle.racer && this.active === cycle.racer) {
        // /negotiate failed but long polling works: keep it, blame nothing.
        this._settleRace(cycle);
        return;
      }
      // The gateway is unreachable: no rung is to blame; try again later.
      this._retry(null, null);
      return;
    }
    var failures = [cycle.failure, cycle.racerFailure];
    for (var f = 0; f < failures.length; f++) {
      if (failures[f] && indexOfName(candidates, failures[f].name) >= 0) {
        this.failed[failures[f].name] = failures[f].reason;
      }
    }
    cycle.failure = cycle.racerFailure = null;
    // While long polling races, only the rungs above it are left to try: it is the answer
    // for the rest of the ladder (in use once proven, else awaited).
    var ceiling = cycle.racer ? indexOfName(candidates, cycle.racer.name) : -1;
    // Down from the starting rung first; when nothing below works either, the rungs above
    // it get their turn too (the remembered rung may be the one that broke).
    for (var k = 0; k < candidates.length; k++) {
      var index = (cycle.floor + k) % candidates.length, spec = candidates[index];
      if (ceiling >= 0 && index >= ceiling) { continue; }
      if (!cycle.tried[spec.name]) {
        this._try(cycle, spec);
        return;
      }
    }
    if (cycle.racer) {
      if (this.active === cycle.racer) { this._settleRace(cycle); }
      return;
    }
    this._retry(null, {
      code: 'no_transport',
      message: candidates.length ? 'every transport failed' : 'no usable transport is offered'
    });
  };

  Client.prototype._endCycle = function () {
    var cycle = this.cycle;
    if (!cycle) { return; }
    this.cycle = null;
    cancel(cycle.raceTimer);
    if (cycle.rung) { cycle.rung.close(); }
    if (cycle.request) { cycle.request.abort(); }
    // A racer in use stays (it is `active`, closed when a better rung takes over); one
    // still proving itself goes with the cycle.
    if (cycle.racer && cycle.racer !== this.active) { cycle.racer.close(); }
  };

  /** Every rung above the racing long poll failed: it wins the race and the cycle ends. */
  Client.prototype._settleRace = function (cycle) {
    var racer = cycle.racer;
    this._endCycle();
    racer.racing = false;
    if (!this.allowed) { this._remember(racer.name); }
    if (Object.keys(this.failed).length) { this._negotiate(noop); }
    this._scheduleProbe();
  };

  /** Schedules the next attempt: the server's delay when it gave one, else backoff. */
  Client.prototype._retry = function (retryMs, error) {
    this._endCycle();
    if (this.closed) { return; }
    var delay;
    if (typeof retryMs === 'number' && retryMs >= 0) {
      delay = retryMs;
    } else {
      var options = this.options;
      var ceiling = Math.min(options.maxBackoffMs, options.minBackoffMs * Math.pow(2, this.attempt));
      delay = Math.floor(Math.random() * ceiling);
      this.attempt = Math.min(this.attempt + 1, 30);
    }
    if (error) { this._emit('error', { code: error.code, message: error.message }); }
    var self = this;
    cancel(this.reconnectTimer);
    this.reconnectTimer = later(function () { self.reconnectTimer = null; self._connect(); }, delay);
  };

  /** Makes `rung` the one in use and closes the previous one. */
  Client.prototype._promote = function (rung) {
    var previous = this.active;
    if (!rung.racing && !rung.shared) { this.worked[rung.name] = true; }
    this.active = rung;
    if (previous && previous !== rung) { this._retire(previous); }
    this.attempt = 0;
    var changed = this.lastTransport !== rung.name;
    this.transport = this.lastTransport = rung.name;
    // Only a rung that carried data is worth starting from next time, and only when the
    // application let the client choose (a forced rung says nothing about the network).
    // A racer is neither remembered nor reported yet: the race is not over.
    if (!rung.idle && !this.allowed && !rung.racing && !rung.shared) { this._remember(rung.name); }
    if (!this.connected) {
      this.connected = true;
      this._emit('connect', { transport: rung.name });
    }
    if (changed) { this._emit('transport', rung.name); }
    // Report the rungs that failed on the way here, all in one report: the gateway counts
    // each fallback towards the first rung the report leaves.
    if (!rung.racing && Object.keys(this.failed).length) { this._negotiate(noop); }
    this._sync();
    this._scheduleProbe();
    if (this.standby && !rung.shared) { this._joinStandingBy(); }
  };

  /** The active rung was lost: reconnect, from the same rung, after a delay. */
  Client.prototype._down = function (rung, info) {
    if (this.draining.indexOf(rung) >= 0) {
      this._drained(rung);
      return;
    }
    if (rung === this.probe) {
      this.probe = null;
      this._scheduleProbe();
      return;
    }
    if (rung !== this.active) { return; }
    this.active = null;
    this.transport = null;
    if (this.probe) { this.probe.close(); this.probe = null; }
    cancel(this.probeTimer);
    this._failPending('disconnected');
    if (this.connected) {
      this.connected = false;
      this._emit('disconnect', { reason: info.reason, retryMs: info.retryMs });
    }
    // The backend ended this user's sessions (POST /disconnect): coming back with the
    // same credentials would be refused; the application decides what follows.
    if (info.reason === 'disconnected') {
      this._emit('error', { code: 'disconnected', message: 'disconnected by the server' });
      this.close();
      return;
    }
    // An SSE stream says its token expired in an event of its own, with no status.
    var expired = info.reason === 'token_expired' ? { code: 'token_expired' } : null;
    if (this._renewable(info.auth || expired)) {
      this._retry(info.retryMs, null);
      return;
    }
    this._retry(info.retryMs, info.auth || null);
  };

  /**
   * Whether getToken can mend the refusal `auth` (an expired token); if so, the next
   * connection attempt asks it for a new token first.
   */
  Client.prototype._renewable = function (auth) {
    if (!auth || auth.code !== 'token_expired' || !this.getToken) { return false; }
    this.tokenStale = true;
    return true;
  };

  /** Asks the application's getToken for a token, then connects with it. */
  Client.prototype._renewToken = function () {
    if (this.renewing) { return; }
    this.renewing = true;
    var self = this, settled = false, timer = null;
    function done(err, token) {
      if (settled) { return; }
      settled = true;
      cancel(timer);
      self.renewing = false;
      if (self.closed) { return; }
      if (err || typeof token !== 'string' || !token) {
        // Backoff, as for any failed attempt: getToken is asked again on the next one.
        self._retry(null, {
          code: 'token_unavailable',
          message: 'getToken gave no token' + (err ? ': ' + String(err && err.message || err) : '')
        });
        return;
      }
      self.token = token;
      self.tokenStale = false;
      self._connect();
    }
    timer = deadline(function () { done('no answer within ' + self.options.timeouts.token + ' ms'); },
      this.options.timeouts.token);
    try {
      var promised = this.getToken(function (err, token) { done(err, token); });
      if (promised && typeof promised.then === 'function') {
        promised.then(function (token) { done(null, token); },
          function (err) { done(err || 'getToken was rejected'); });
      }
    } catch (e) {
      done(e);
    }
  };

  /** Tells the active rung about channel changes, replacing it when it cannot adapt. */
  Client.prototype._sync = function () {
    var rung = this.active;
    if (this.standby && this.standby.opened && !this.closed) { this.standby.sync(); }
    if (!rung || this.closed) { return; }
    if (rung.sync() === false && !(this.probe && this.probe.replacing)) {
      if (this.probe) { this.probe.close(); this.probe = null; }
      this._tryAlongside(rung.name, true);
    }
  };

  // --- a connection shared by the tabs ----------------------------------------------------

  /** Whether the tabs' browser has what rung `name` needs (see Hub.start). */
  Client.prototype._supported = function (name) {
    return !this.lacks[name] && supported(name);
  };

  /** The link to the hub this tab joins, or null for a connection of its own. */
  Client.prototype._shareLink = function () {
    var share = this.options.share;
    if (share === false || IN_SHARED_WORKER || !root.document) { return null; }
    var key = hash([this.base, this.token || '', query(this.query || {}), (this.allowed || []).join(','),
      this._lacking().join(','), this.getToken ? 'getToken' : ''].join(' '));
    var link = share === 'leader' ? null : workerLink(this, key);
    if (link) {
      this.shareRole = 'worker';
    } else {
      link = leaderLink(this, key);
      // A lone tab may have been elected already (see leaseElection).
      if (link && !this.shareRole) { this.shareRole = 'follower'; }
    }
    return link;
  };

  /** The rungs this browser lacks. */
  Client.prototype._lacking = function () {
    var out = [], names = ['websocket', 'sse', 'longpoll', 'poll'];
    for (var i = 0; i < names.length; i++) {
      if (!supported(names[i])) { out.push(names[i]); }
    }
    return out;
  };

  /** What a hub needs from the first tab that joins it to open the connection. */
  Client.prototype._shareConfig = function () {
    var options = {};
    for (var i = 0; i < SHARED_OPTIONS.length; i++) {
      var name = SHARED_OPTIONS[i];
      if (name === 'token') {
        options.token = this.token;
      } else if (name === 'transports') {
        options.transports = this.allowed;
      } else {
        options[name] = this.options[name];
      }
    }
    return {
      base: this.base,
      options: options,
      getToken: !!this.getToken,
      lacks: this._lacking(),
      remembered: this._remembered()
    };
  };

  /**
   * Asks whether the worker's hub already serves other tabs. If it does, this tab waits on
   * the hub's connection; if not, starting a SharedWorker costs the first message more than
   * a connection does (a process to start, the script to load), and a lone tab needs no
   * sharing: it connects on its own at once and stands by (see `_standBy`).
   */
  Client.prototype._lookForHub = function () {
    var self = this, cycle = this.cycle = {};
    this.link.hubAlive(function (alive) {
      if (self.cycle !== cycle) { return; }
      self.cycle = null;
      if (alive) {
        self._connectShared();
      } else {
        self._standBy();
      }
    });
  };

  /**
   * Joins the hub as a tab that has a connection of its own: the hub opens its connection
   * once a second tab joins, and this tab then moves to it (the hub's positions and a
   * catch-up from GET /poll see that it loses nothing) and lets its own go.
   */
  Client.prototype._standBy = function () {
    var rung = new SharedRung(this, this.link);
    rung.standby = true;
    this.standby = rung;
    if (this.active) {
      this._joinStandingBy();
    } else {
      // The hub is joined (and a worker started) once this tab's own connection works, so
      // that starting them does not compete with it for the first message.
      this._connect();
    }
  };

  /** The tab's own connection works: it joins the hub, and moves to it once it is up. */
  Client.prototype._joinStandingBy = function () {
    var self = this, rung = this.standby;
    if (!rung || rung.opened) { return; }
    rung.opened = true;
    rung.open(function () {
      if (self.standby !== rung || self.closed) { rung.close(); return; }
      self.standby = null;
      rung.standby = false;
      // The tab's own connection, wherever it stands, makes way.
      cancel(self.reconnectTimer);
      self.reconnectTimer = null;
      self._endCycle();
      if (self.probe) { self.probe.close(); self.probe = null; }
      self._promote(rung);
    });
  };

  Client.prototype._connectShared = function () {
    var self = this, rung = new SharedRung(this, this.link);
    this.cycle = { rung: rung };
    rung.open(function () {
      if (self.cycle && self.cycle.rung === rung) {
        self.cycle = null;
        self._promote(rung);
      } else {
        rung.close();
      }
    });
  };

  /** The shared connection went down or came back (or changed rungs). */
  Client.prototype._sharedState = function (rung, state) {
    if (rung !== this.active) { return; }
    if (state.connected) {
      this.transport = rung.name;
      if (!this.connected) {
        this.connected = true;
        this._emit('connect', { transport: rung.name });
      }
      if (this.lastTransport !== rung.name) {
        this.lastTransport = rung.name;
        this._emit('transport', rung.name);
      }
    } else if (this.connected) {
      this.connected = false;
      this.transport = null;
      this._failPending('disconnected');
      this._emit('disconnect', { reason: state.reason || 'closed', retryMs: state.retryMs || null });
    }
  };

  /**
   * The SharedWorker failed (its script did not load, or threw): this tab shares through
   * a leader tab instead, or connects on its own where it cannot.
   */
  Client.prototype._unshare = function () {
    if (this.closed || this.shareRole !== 'worker') { return; }
    this.shareRole = null;
    this.options.share = 'leader';
    if (this.standby) {
      // The tab's own connection carries on and stands by for a leader tab's instead.
      this.standby.close();
      this.standby = null;
      this.link = this._shareLink();
      if (this.link) { this._standBy(); }
      return;
    }
    var rung = this.active || (this.cycle && this.cycle.rung);
    this.link = undefined;
    this.cycle = null;
    this.active = null;
    if (rung) { rung.close(); }
    if (this.connected) {
      this.connected = false;
      this.transport = null;
      this._emit('disconnect', { reason: 'closed', retryMs: null });
    }
    this._connect();
  };

  /** A hub asks this tab's getToken for a token for the shared connection. */
  Client.prototype._lendToken = function (link, n) {
    var self = this, settled = false;
    function done(err, token) {
      if (settled) { return; }
      settled = true;
      link.send({ op: 'token', n: n, err: err ? String(err && err.message || err) : null, token: token || null });
    }
    if (!this.getToken) { done('no getToken'); return; }
    try {
      var promised = this.getToken(function (err, token) {
        if (!err && token) { self.token = token; }
        done(err, token);
      });
      if (promised && typeof promised.then === 'function') {
        promised.then(function (token) { self.token = token; done(null, token); },
          function (err) { done(err || 'getToken was rejected'); });
      }
    } catch (e) {
      done(e);
    }
  };

  // --- climbing back up ----------------------------------------------------------------

  Client.prototype._scheduleProbe = function () {
    cancel(this.probeTimer);
    this.probeTimer = null;
    if (this.closed || !this.active || this.active.shared || this.probe || this.cycle) { return; }
    var candidates = this._candidates(), at = indexOfName(candidates, this.active.name);
    if (at <= 0) { return; }
    var self = this;
    this.probeTimer = later(function () {
      self.probeTimer = null;
      self._climb(0);
    }, this.options.probeIntervalMs);
  };

  /** Tries the rungs above the active one, best first; the first that works takes over. */
  Client.prototype._climb = function (from) {
    if (this.closed || !this.active || this.probe) { return; }
    var candidates = this._candidates(), at = indexOfName(candidates, this.active.name);
    if (from >= at || at < 0) { this._scheduleProbe(); return; }
    var self = this;
    this._tryAlongside(candidates[from].name, false, function () { self._climb(from + 1); });
  };

  /**
   * Opens `name` next to the active rung. Both deliver into the same dedupe, so the switch
   * shows the application neither a gap nor a duplicate; the old rung closes on promotion.
   */
  Client.prototype._tryAlongside = function (name, replacing, onFail) {
    var candidates = this._candidates(), at = indexOfName(candidates, name);
    var spec = at >= 0 ? candidates[at] : DEFAULT_LADDER[indexOfName(DEFAULT_LADDER, name)];
    var self = this, rung = RUNGS[name](this, spec);
    rung.replacing = replacing;
    this.probe = rung;
    rung.open(function (reason) {
      if (self.probe !== rung) { rung.close(); return; }
      self.probe = null;
      if (reason === null) {
        self._promote(rung);
      } else if (replacing) {
        // The same rung no longer opens: treat the active one as lost too.
        if (self.active) {
          var active = self.active;
          active.close();
          self._down(active, { reason: reason, retryMs: null });
        }
      } else if (onFail) {
        onFail();
      } else {
        self._scheduleProbe();
      }
    });
  };

  // ---------------------------------------------------------------------------------------
  // One connection for all tabs. The connection itself (an ordinary Client, the "upstream")
  // lives in a hub: in a SharedWorker running this very file where the browser has one, else
  // in one tab elected leader with a Web Lock (or a localStorage lease), the others reaching
  // it over a BroadcastChannel (or storage events). A worker's hub opens its connection only
  // once two tabs share it: a lone tab does not wait for a worker to start (see _lookForHub).
  // Each tab keeps a Client of its own (its channels, positions, dedupe and handlers) whose
  // one rung is a SharedRung talking to the hub. The hub forwards every message of a channel
  // to the tabs that follow it; a tab that is behind the hub (it followed an older leader)
  // reads what it missed with GET /poll before it takes forwarded messages again.

  /**
   * The URL this script was loaded from: the SharedWorker runs the same file. Only a file
   * named cascade.js (or cascade.min.js): a bundle that contains the client would run the
   * whole application in the worker (`workerUrl` names the file then).
   */
  var SCRIPT_URL = (function () {
    try {
      var script = root.document && root.document.currentScript;
      var src = script && script.src ? script.src : null;
      return src && /\/cascade(\.min)?\.js([?#]|$)/.test(src) ? src : null;
    } catch (e) {
      return null;
    }
  }());

  /** Messages a catching-up tab holds per channel; past it, it reads them from /poll too. */
  var MAX_HELD = 1000;

  var IN_SHARED_WORKER = typeof root.SharedWorkerGlobalScope === 'function' &&
    root instanceof root.SharedWorkerGlobalScope;

  /** Soon but not now: hub and tab in one page talk asynchronously, as they would apart. */
  function soon(fn) {
    if (typeof root.Promise === 'function') {
      root.Promise.resolve().then(fn);
    } else {
      later(fn, 0);
    }
  }

  function randomId() {
    return Math.random().toString(36).slice(2) + Date.now().toString(36);
  }

  /** FNV-1a of `text` in hex: names a hub without putting a token in a worker's name. */
  function hash(text) {
    var h = 0x811c9dc5;
    for (var i = 0; i < text.length; i++) {
      h ^= text.charCodeAt(i);
      h = (h + ((h << 1) + (h << 4) + (h << 7) + (h << 8) + (h << 24))) >>> 0;
    }
    return h.toString(16);
  }

  /** "a@e:1,b" -> [{channel, epoch, offset}] for the entries that carry a position. */
  function positions(cursor) {
    var out = [], entries = typeof cursor === 'string' && cursor ? cursor.split(',') : [];
    for (var i = 0; i < entries.length; i++) {
      var m = /^([^@]+)@([A-Za-z0-9]+):(\d+)$/.exec(entries[i]);
      if (m) { out.push({ channel: m[1], epoch: m[2], offset: parseInt(m[3], 10) }); }
    }
    return out;
  }

  /** The options a hub's connection takes from the first tab that joins it. */
  var SHARED_OPTIONS = ['token', 'query', 'transports', 'timeouts', 'probeIntervalMs', 'minBackoffMs',
    'maxBackoffMs', 'remember', 'raceDelayMs'];

  /**
   * The connection shared by the tabs, wherever it runs. `out` delivers to the tabs:
   * out.send(tabId, msg) to one, out.channel(channel, msg) to those that follow `channel`
   * (it may reach others too: a tab ignores channels it does not follow).
   */
  function Hub(out) {
    this.out = out;
    // tab id -> {channels: [], getToken: bool, waiting: {channel: true}, standby: bool, watched: bool}
    this.tabs = {};
    this.config = {};      // a tab's, to open the connection with when it is needed
    this.upstream = null;
    this.tokenAsks = {};   // n -> done
    this.nextAsk = 1;
    this.remembered = null;
    this.server = {};      // channels the server subscribed the connection to (hooks)
  }

  Hub.prototype.receive = function (msg) {
    if (!msg || typeof msg.tab !== 'string') { return; }
    if (this.tabs[msg.tab]) { this.tabs[msg.tab].seen = Date.now(); }
    if (msg.op === 'join') {
      this.join(msg);
    } else if (msg.op === 'held') {
      if (this.tabs[msg.tab]) { this.watch(msg.tab); }
    } else if (msg.op === 'leave') {
      this.leave(msg.tab);
    } else if (msg.op === 'ping') {
      // A follower found the lease lapsed: answered, it knows the leader lives.
      this.out.send(msg.tab, { op: 'pong' });
    } else if (msg.op === 'alive' && !this.tabs[msg.tab]) {
      // A tab this hub let go (it was silent too long) or never knew: it joins again.
      this.out.send(msg.tab, { op: 'rejoin' });
    } else if (msg.op === 'token' && this.tokenAsks[msg.n]) {
      var done = this.tokenAsks[msg.n];
      delete this.tokenAsks[msg.n];
      done(msg.err || null, msg.token);
    }
  };

  Hub.prototype.start = function (config) {
    var self = this, options = {}, i;
    for (i = 0; i < SHARED_OPTIONS.length; i++) {
      if (config.options[SHARED_OPTIONS[i]] !== undefined) { options[SHARED_OPTIONS[i]] = config.options[SHARED_OPTIONS[i]]; }
    }
    options.share = false;
    if (config.getToken) {
      // The application's getToken runs in a tab: ask one that has it.
      options.getToken = function (done) { self.askToken(done); };
    }
    this.remembered = config.remembered || null;
    var up = this.upstream = new Client(config.base, options);
    // The tabs' browser, not the worker's, says which rungs exist: a worker has WebSocket
    // even where the page does not, and the rungs it lacks are reported as unsupported.
    up.lacks = {};
    for (i = 0; i < (config.lacks || []).length; i++) { up.lacks[config.lacks[i]] = true; }
    // A worker has no sessionStorage: the rung to start from is the tabs' to keep.
    up.storage = {
      getItem: function () { return self.remembered; },
      setItem: function (key, name) {
        self.remembered = name;
        self.out.all({ op: 'remember', name: name });
      }
    };
    this.server = {};
    up._positioned = function () { if (self.upstream === up) { self.answerWaiting(); } };
    // A hooked session is the tabs' too: they send its value with their own requests
    // (publish, rpc), and follow what the server subscribes the connection to.
    up.on('session', function () { self.out.all(self.state()); });
    up.on('subscribed', function (e) {
      if (!e.server) { return; }
      self.server[e.channel] = true;
      self.tellServer([e.channel], []);
    });
    up.on('unsubscribed', function (e) {
      if (!e.server) { return; }
      delete self.server[e.channel];
      self.tellServer([], [e.channel]);
    });
    up.on('message', function (m) { self.out.channel(m.channel, { op: 'message', m: m }); });
    up.on('gap', function (gap) { self.out.channel(gap.channel, { op: 'gap', gap: gap }); });
    up.on('connect', function () { self.out.all(self.state()); });
    up.on('transport', function () { self.out.all(self.state()); });
    up.on('disconnect', function (info) {
      if (self.upstream !== up) { return; }
      var state = self.state();
      state.reason = info.reason;
      state.retryMs = info.retryMs;
      self.out.all(state);
    });
    up.on('error', function (err) {
      if (!err.channel) {
        self.out.all({ op: 'error', error: err });
        return;
      }
      // The gateway refused a channel: every tab that asked for it drops it.
      for (var id in self.tabs) {
        if (has(self.tabs, id) && self.tabs[id].channels.indexOf(err.channel) >= 0) {
          self.tabs[id].channels = without(self.tabs[id].channels, [err]);
          self.out.send(id, { op: 'refused', refused: [{ channel: err.channel, code: err.code }] });
        }
      }
    });
  };

  Hub.prototype.state = function () {
    var up = this.upstream;
    return {
      op: 'state',
      connected: !!(up && up.connected),
      transport: up ? up.transport : null,
      client: up ? up.clientId : null,
      session: up ? up.session || null : null
    };
  };

  /** Every tab follows the channels the server subscribed the connection to, or not. */
  Hub.prototype.tellServer = function (subscribed, unsubscribed) {
    var gone = [];
    for (var j = 0; j < unsubscribed.length; j++) { gone.push({ channel: unsubscribed[j] }); }
    for (var id in this.tabs) {
      if (has(this.tabs, id)) {
        var tab = this.tabs[id];
        tab.channels = without(tab.channels, gone);
        for (var i = 0; i < subscribed.length; i++) {
          if (tab.channels.indexOf(subscribed[i]) < 0) { tab.channels.push(subscribed[i]); }
        }
      }
    }
    this.out.all({ op: 'server', subscribed: subscribed, unsubscribed: unsubscribed });
  };

  /**
   * Whether the hub needs a connection of its own: a tab waits on it, or two tabs stand by
   * on connections of their own (a lone tab keeps its own: see `_standBy`).
   */
  Hub.prototype.needed = function () {
    var count = 0;
    for (var id in this.tabs) {
      if (has(this.tabs, id)) {
        if (!this.tabs[id].standby) { return true; }
        count += 1;
      }
    }
    return count > 1;
  };

  /** A tab's (new) channels and positions; answered with the hub's positions. */
  Hub.prototype.join = function (msg) {
    var tab = this.tabs[msg.tab], i, channel;
    // The latest tab's (a fresher token), should the connection have to be opened anew.
    if (msg.config) { this.config = msg.config; }
    if (!tab) {
      tab = this.tabs[msg.tab] = {
        channels: [], getToken: false, waiting: {}, standby: false, watched: false,
        seen: Date.now(), pinged: 0
      };
    }
    if (msg.held) { this.watch(msg.tab); }
    tab.getToken = !!(msg.config && msg.config.getToken);
    tab.standby = !!msg.standby;
    var wanted = [];
    for (i = 0; i < (msg.channels || []).length; i++) {
      channel = msg.channels[i];
      if (typeof channel === 'string' && CHANNEL.test(channel)) { wanted.push(channel); }
    }
    var dropped = tab.channels;
    tab.channels = wanted;
    tab.waiting = {};
    for (i = 0; i < wanted.length; i++) { tab.waiting[wanted[i]] = true; }
    if (!this.upstream && this.needed()) {
      this.start(this.config);
      // The tabs that stood by follow their channels from now on; each one reads what it
      // missed from its own position (SharedRung.subscribed) before it lets its own go.
      for (var id in this.tabs) {
        if (has(this.tabs, id) && id !== msg.tab) { this.follow(this.tabs[id].channels, null); }
      }
    }
    if (this.upstream) {
      this.follow(wanted, tab.standby ? null : msg.cursor);
      for (i = 0; i < dropped.length; i++) {
        if (wanted.indexOf(dropped[i]) < 0) { this.release(dropped[i]); }
      }
      this.upstream._sync();
    }
    var state = this.state();
    state.op = 'joined';
    this.out.send(msg.tab, state);
    var server = Object.keys(this.server);
    if (server.length) {
      for (i = 0; i < server.length; i++) {
        if (tab.channels.indexOf(server[i]) < 0) { tab.channels.push(server[i]); }
      }
      this.out.send(msg.tab, { op: 'server', subscribed: server, unsubscribed: [] });
    }
    this.answer(msg.tab);
  };

  /**
   * Adds `channels` to the connection. One new to it starts where the tab of `cursor`
   * stands, so that tab (the new leader's own, after a hand-over) misses nothing.
   */
  Hub.prototype.follow = function (channels, cursor) {
    var up = this.upstream, given = positions(cursor), at = {}, i;
    for (i = 0; i < given.length; i++) { at[given[i].channel] = given[i]; }
    for (i = 0; i < channels.length; i++) {
      var channel = channels[i];
      if (has(up.subs, channel)) { continue; }
      if (at[channel]) { up.pos[channel] = { epoch: at[channel].epoch, offset: at[channel].offset }; }
      up._add(channel);
    }
  };

  /** Drops `channel` from the connection when no tab follows it any more. */
  Hub.prototype.release = function (channel) {
    // The server's subscriptions stay until the server drops them.
    if (this.server[channel]) { return; }
    for (var id in this.tabs) {
      if (has(this.tabs, id) && this.tabs[id].channels.indexOf(channel) >= 0) { return; }
    }
    if (has(this.upstream.subs, channel)) { this.upstream._drop(channel); }
  };

  Hub.prototype.leave = function (id) {
    var tab = this.tabs[id];
    if (!tab) { return; }
    delete this.tabs[id];
    if (!this.upstream) { return; }
    for (var i = 0; i < tab.channels.length; i++) { this.release(tab.channels[i]); }
    for (id in this.tabs) {
      if (has(this.tabs, id)) {
        this.upstream._sync();
        return;
      }
    }
    // The last tab left: no connection until one joins again.
    this.upstream.close();
    this.upstream = null;
  };

  /**
   * Lets go of the tabs that went without a word, where no Web Lock tells (see `watch`):
   * a tab silent for a while is pinged, and one silent past TAB_SILENT_MS that did not
   * answer a ping ANSWER_MS old is dropped. Told so, one that was only frozen joins again
   * when it wakes (and reads what it missed). The hub's own tab (`local`) is never dropped.
   */
  Hub.prototype.sweep = function (now) {
    for (var id in this.tabs) {
      if (!has(this.tabs, id) || id === this.local) { continue; }
      var tab = this.tabs[id], silent = now - tab.seen, pinged = tab.pinged > tab.seen;
      if (tab.watched) { continue; }
      if (silent > TAB_SILENT_MS && pinged && now - tab.pinged >= ANSWER_MS) {
        this.leave(id);
        this.out.send(id, { op: 'rejoin' });
      } else if (silent > 2 * HEARTBEAT_MS && !pinged) {
        tab.pinged = now;
        this.out.send(id, { op: 'ping' });
      }
    }
  };

  /**
   * Learns when tab `id` is gone, closed or crashed without a word: it holds a Web Lock of
   * its own for as long as it lives, so the hub's request for that lock is granted then.
   */
  Hub.prototype.watch = function (id) {
    var self = this, locks = root.navigator && root.navigator.locks, tab = this.tabs[id];
    if (!tab || tab.watched || !locks || typeof locks.request !== 'function') { return; }
    tab.watched = true;
    try {
      locks.request('cascade-tab ' + id, function () { self.leave(id); }).then(noop, noop);
    } catch (e) { /* unsupported here: tabs say goodbye on pagehide */ }
  };

  /** Sends tab `id` the positions now known for the channels it waits on. */
  Hub.prototype.answer = function (id) {
    var tab = this.tabs[id], known = [], channel;
    if (!tab || !this.upstream) { return; }
    for (channel in tab.waiting) {
      if (has(tab.waiting, channel) && this.upstream.pos[channel]) {
        known.push(channel);
        delete tab.waiting[channel];
      }
    }
    if (known.length) { this.out.send(id, { op: 'subscribed', cursor: this.upstream._cursor(known) }); }
  };

  Hub.prototype.answerWaiting = function () {
    for (var id in this.tabs) {
      if (has(this.tabs, id)) { this.answer(id); }
    }
  };

  Hub.prototype.askToken = function (done) {
    var self = this;
    for (var id in this.tabs) {
      if (has(this.tabs, id) && this.tabs[id].getToken) {
        var n = this.nextAsk++;
        this.tokenAsks[n] = function (err, token) {
          // Every tab publishes and catches up with HTTP requests of its own.
          if (!err && token) { self.out.all({ op: 'newToken', token: token }); }
          done(err, token);
        };
        this.out.send(id, { op: 'token?', n: n });
        return;
      }
    }
    done('no tab has getToken');
  };

  /** The rung of a tab whose connection is shared: it talks to the hub over `link`. */
  function SharedRung(client, link) {
    this.name = null;
    this.client = client;
    this.link = link;
    this.shared = true;
    this.dead = false;
    this.proven = false;
    this.joined = false;
    this.catching = {};   // channel -> {until, held: [messages]} while reading what it missed
    this.done = noop;
  }

  SharedRung.prototype.open = function (done) {
    var self = this, client = this.client;
    this.done = done;
    this.link.onmessage = function (msg) { if (!self.dead) { self.receive(msg); } };
    if (this.link.kind === 'worker') {
      // A worker that never answers (one whose script failed for an earlier tab is not
      // always reported again) is given up like one that reported its failure.
      this.timer = deadline(function () {
        if (!self.dead && !self.joined) { client._unshare(); }
      }, client.options.timeouts.negotiate);
    }
    this.join();
  };

  SharedRung.prototype.join = function () {
    var client = this.client, channels = client._channels();
    this.link.send({
      op: 'join',
      standby: !!this.standby,
      channels: channels,
      cursor: client._cursor(channels),
      config: client._shareConfig()
    });
  };

  SharedRung.prototype.receive = function (msg) {
    var client = this.client;
    switch (msg.op) {
      case 'joined':
        this.joined = true;
        cancel(this.timer);
        this.state(msg);
        break;
      case 'state': this.state(msg); break;
      case 'subscribed': this.subscribed(msg.cursor); break;
      case 'message':
        if (msg.m && this.catching[msg.m.channel]) {
          this.hold(this.catching[msg.m.channel], msg.m);
        } else {
          client._message(msg.m);
        }
        break;
      case 'gap': client._gap(msg.gap); break;
      case 'refused': client._refused(msg.refused); break;
      case 'server':
        client._serverSubscribed(msg.subscribed || []);
        client._serverUnsubscribed(msg.unsubscribed || []);
        break;
      case 'error': client._emit('error', msg.error); break;
      case 'remember': client._remember(msg.name); break;
      case 'token?': client._lendToken(this.link, msg.n); break;
      case 'newToken': if (typeof msg.token === 'string') { client.token = msg.token; } break;
      case 'leader': this.join(); break; // a new hub: it knows nothing of this tab yet
      case 'rejoin': this.join(); break; // the hub let this tab go while it was silent
      default: break;
    }
  };

  SharedRung.prototype.state = function (msg) {
    if (msg.transport) { this.name = msg.transport; }
    if (typeof msg.session === 'string') { this.client._session({ client: msg.client, session: msg.session }); }
    if (!this.proven) {
      if (this.joined && msg.connected && this.name) {
        this.proven = true;
        this.done(null);
      }
      return;
    }
    this.client._sharedState(this, msg);
  };

  /**
   * The hub's positions for channels this tab follows: where the tab has none, it starts
   * there; where the tab is behind (its last hub was further back), it first reads the
   * difference itself.
   */
  SharedRung.prototype.subscribed = function (cursor) {
    var client = this.client, given = positions(cursor), behind = [];
    for (var i = 0; i < given.length; i++) {
      var g = given[i], p = client.pos[g.channel];
      if (!has(client.subs, g.channel) || this.catching[g.channel]) { continue; }
      if (p && p.epoch === g.epoch && p.offset < g.offset) {
        this.catching[g.channel] = { until: g.offset, held: [] };
        behind.push(g.channel);
      }
    }
    client._startAt(cursor);
    if (behind.length) { this.catchUp(behind); }
  };

  /** GET /poll from this tab's own cursor until it reaches the hub's position. */
  SharedRung.prototype.catchUp = function (channels) {
    var self = this, client = this.client;
    var url = withQuery(client._url('/poll'), { channels: channels.join(','), cursor: client._cursor(channels) });
    this.asking = request('GET', url, null, client.options.timeouts.poll, function (err, body) {
      self.asking = null;
      if (self.dead) { return; }
      var again = [];
      if (!err) {
        client._polled(body);
        for (var i = 0; i < channels.length; i++) {
          var p = client.pos[channels[i]], c = self.catching[channels[i]];
          var progressed = body.messages && body.messages.length;
          if (c && p && p.offset < c.until && progressed) { again.push(channels[i]); }
        }
      }
      for (var j = 0; j < channels.length; j++) {
        if (again.indexOf(channels[j]) < 0) { self.release(channels[j]); }
      }
      if (again.length) { self.catchUp(again); }
    });
  };

  /** Keeps a forwarded message until the catch-up is done, or moves the catch-up's goal. */
  SharedRung.prototype.hold = function (catching, m) {
    if (catching.held.length < MAX_HELD) {
      catching.held.push(m);
    } else if (typeof m.offset === 'number') {
      catching.until = Math.max(catching.until, m.offset);
    }
  };

  /** Done reading what it missed: the messages held meanwhile go through the dedupe. */
  SharedRung.prototype.release = function (channel) {
    var c = this.catching[channel];
    delete this.catching[channel];
    for (var i = 0; c && i < c.held.length; i++) { this.client._message(c.held[i]); }
  };

  /** Channel changes go to the hub as the tab's whole set. */
  SharedRung.prototype.sync = function () {
    if (!this.dead) { this.join(); }
    return true;
  };

  SharedRung.prototype.close = function () {
    if (this.dead) { return; }
    this.dead = true;
    cancel(this.timer);
    if (this.asking) { this.asking.abort(); }
    this.link.close();
  };

  // Links a tab to a hub: {send(msg), onmessage, close()}.

  /**
   * Holds the Web Lock `cascade-tab <id>` while this page lives (a hub watches it to learn
   * the tab is gone), then calls `held`; never where there are no Web Locks.
   */
  function holdTabLock(id, held) {
    var locks = root.navigator && root.navigator.locks;
    if (!locks || typeof locks.request !== 'function' || typeof root.Promise !== 'function') { return; }
    try {
      locks.request('cascade-tab ' + id, function () {
        held();
        return new root.Promise(noop);
      }).then(noop, noop);
    } catch (e) { /* no lock: the hub learns of the tab's end from its goodbye */ }
  }

  /**
   * Wraps `post` so that the hub learns when it may watch this tab's lock: a join says
   * whether the tab holds it, and the tab says so once it does. Messages are not held back
   * for the lock (that would cost the first message a round trip to the lock manager): a
   * hub that asked for the lock before the tab held it would be granted it at once. The
   * lock is taken once per client: a link that replaces another (a worker that failed)
   * reuses it.
   */
  function tabPost(client, post) {
    var lock = client.tabLock, sent = false;
    if (!lock) {
      lock = client.tabLock = { held: false, waiting: [] };
      holdTabLock(client.tabId, function () {
        lock.held = true;
        for (var i = 0; i < lock.waiting.length; i++) { lock.waiting[i](); }
        lock.waiting = null;
      });
    }
    if (!lock.held) {
      lock.waiting.push(function () {
        if (sent) { post({ op: 'held', tab: client.tabId }); }
      });
    }
    return function (msg) {
      if (msg.op === 'join') {
        msg.held = lock.held;
        sent = true;
      }
      post(msg);
    };
  }

  /** The SharedWorker of hub `key`, by version: a page never joins a worker of another build. */
  function workerName(key) { return 'cascade ' + VERSION + ' ' + key; }

  /** The hub in a SharedWorker running this file; null where that cannot be. */
  function workerLink(client, key) {
    var url = client.options.workerUrl || SCRIPT_URL;
    if (!url || typeof root.SharedWorker !== 'function') { return null; }
    var worker = null, port = null, tab = client.tabId, hubLock = 'cascade-hub ' + workerName(key);
    var loneLock = 'cascade-lone ' + workerName(key);
    // The worker starts with the first message to it: a lone tab connects on its own first,
    // and starts it only then (it costs a process and the script's load).
    function start() {
      if (worker) { return !!port; }
      try {
        worker = new root.SharedWorker(url, { name: workerName(key) });
      } catch (e) {
        worker = {}; // another origin, or workers are blocked here
        later(function () { client._unshare(); }, 0);
        return false;
      }
      port = worker.port;
      port.onmessage = function (event) { link.onmessage(event.data || {}); };
      worker.onerror = function () { client._unshare(); };
      port.start();
      return true;
    }
    var post = tabPost(client, function (msg) {
      if (!start()) { return; }
      try { port.postMessage(msg); } catch (e) { /* closed */ }
    });
    var link = {
      kind: 'worker',
      onmessage: noop,
      send: function (msg) {
        msg.tab = tab;
        post(msg);
      },
      /**
       * Calls `done(true)` when this tab should wait on the worker's connection: its hub
       * serves other tabs (it holds its lock), or another tab is already connecting on its
       * own (it holds the lone lock). Of a burst of tabs only the first one to claim that
       * lock connects on its own; the others start the hub's connection at once, so the
       * burst opens two connections, not one per tab.
       */
      hubAlive: function (done) {
        var alive = null, lone = null;
        function settle() {
          if (alive === null || lone === null) { return; }
          done(alive || !lone);
        }
        claimLock(loneLock, function (mine) { lone = mine; settle(); });
        heldLocks(function (names) { alive = names.indexOf(hubLock) >= 0; settle(); });
      },
      close: function () {
        if (!port) { return; }
        link.send({ op: 'leave' });
        try { port.close(); } catch (e) { /* closed */ }
      }
    };
    if (!(root.navigator && root.navigator.locks)) {
      // Without Web Locks the hub cannot watch the tab: it says goodbye.
      onPageHide(function (event) { if (port && !(event && event.persisted)) { link.send({ op: 'leave' }); } });
    }
    return link;
  }

  /**
   * The Web Locks held in this origin, asked for as this script loads: the answer is a round
   * trip to the browser's lock manager (tens of ms on a busy machine), which a lone tab
   * would otherwise wait for before it connects. Taken from then for a second, else asked
   * again.
   */
  var lockQuery = queryLocks();

  function queryLocks() {
    var query = { at: Date.now(), names: null, waiting: [] };
    var locks = !IN_SHARED_WORKER && root.navigator && root.navigator.locks;
    function answer(names) {
      query.names = names;
      var waiting = query.waiting;
      query.waiting = [];
      for (var i = 0; i < waiting.length; i++) { waiting[i](names); }
    }
    if (!locks || typeof locks.query !== 'function') {
      query.names = [];
      return query;
    }
    try {
      locks.query().then(function (state) {
        var held = (state && state.held) || [], names = [];
        for (var i = 0; i < held.length; i++) { names.push(held[i].name); }
        answer(names);
      }, function () { answer([]); });
    } catch (e) {
      query.names = [];
    }
    return query;
  }

  /** Calls `done(names)` with the names of the Web Locks held in this origin (see lockQuery). */
  function heldLocks(done) {
    if (Date.now() - lockQuery.at > 1000) { lockQuery = queryLocks(); }
    if (lockQuery.names) {
      done(lockQuery.names);
    } else {
      lockQuery.waiting.push(done);
    }
  }

  /**
   * Takes the Web Lock `name` if no other page holds it, for as long as this page lives;
   * `done(true)` when this page got it. Without Web Locks every page gets it.
   */
  function claimLock(name, done) {
    var locks = root.navigator && root.navigator.locks;
    if (!locks || typeof locks.request !== 'function' || typeof root.Promise !== 'function') {
      done(true);
      return;
    }
    try {
      locks.request(name, { ifAvailable: true }, function (lock) {
        done(!!lock);
        return lock ? new root.Promise(noop) : undefined;
      }).then(noop, function () { done(true); });
    } catch (e) {
      done(true);
    }
  }

  /** localStorage, where this page may use it. */
  function localStore() {
    try {
      var s = root.localStorage;
      return s && typeof s.getItem === 'function' ? s : null;
    } catch (e) {
      return null;
    }
  }

  /** Calls `fn` when the page goes (closed, navigated away, or put in the back-forward cache). */
  function onPageHide(fn) {
    if (typeof root.addEventListener === 'function') { root.addEventListener('pagehide', fn); }
  }

  /**
   * A BroadcastChannel-like bus over `storage` events, for browsers without one: each tab
   * writes its messages to a localStorage key of its own, which the other tabs of the
   * origin see change (the writer does not, as with a BroadcastChannel). Null without
   * localStorage.
   */
  function storageBus(name) {
    var store = localStore();
    if (!store || typeof root.addEventListener !== 'function') { return null; }
    var prefix = 'cascade-bus ' + name + ' ', mine = prefix + randomId(), n = 0;
    var bus = { onmessage: noop };
    function heard(event) {
      var key = event.key;
      if (typeof key !== 'string' || key.indexOf(prefix) !== 0 || key === mine || !event.newValue) { return; }
      var data = parse(event.newValue);
      if (data && data.m) { bus.onmessage({ data: data.m }); }
    }
    root.addEventListener('storage', heard);
    bus.postMessage = function (msg) {
      // A count makes every write a change (the same value twice would not be seen).
      try { store.setItem(mine, JSON.stringify({ n: n++, m: msg })); } catch (e) { /* full or denied */ }
    };
    bus.close = function () {
      if (typeof root.removeEventListener === 'function') { root.removeEventListener('storage', heard); }
      try { store.removeItem(mine); } catch (e) { /* denied */ }
    };
    return bus;
  }

  /** How long a leader tab's lease lasts unless renewed, and how often the leader renews it. */
  var LEASE_MS = 5000;
  var RENEW_MS = 1000;
  /** How long a tab that claimed the lease waits before it reads back who won it. */
  var SETTLE_MS = 60;
  /**
   * How often a follower tells the hub it lives (its own timers: a background tab's may
   * fire once a minute), how long the hub waits for an answer to a ping (a message
   * handler runs at once even in a throttled tab; only a frozen or crashed one is silent),
   * and how long a tab may be silent before a hub that pinged it lets its channels go.
   */
  var HEARTBEAT_MS = 1000;
  var ANSWER_MS = 1000;
  var TAB_SILENT_MS = 5000;

  /**
   * Elects a leader among the tabs with a lease in localStorage, for browsers without Web
   * Locks: {id, until}, renewed by the leader every RENEW_MS and whenever it handles an
   * event (`renew()`: a follower's heartbeat, a message; a background tab's timers may
   * fire only once a minute, its event handlers run at once), free once it lapses and the
   * leader does not answer a ping (`ask(done)` calls done(true) when it answered within
   * ANSWER_MS: it is throttled, not gone) or once it is given up (a leader's page going).
   * A tab claims a free lease by writing its id and leads if the id is still there
   * SETTLE_MS later (the last of several claims wins; the first tab of an origin leads at
   * once and checks after). A leader that finds the lease taken (its page slept past the
   * lease and did not answer) steps down. Calls `lead()` and `stepDown()`; returns
   * {check(gone), renew(), resign()}, or null without localStorage.
   */
  function leaseElection(name, tab, lead, stepDown, ask) {
    var store = localStore();
    if (!store) { return null; }
    var key = 'cascade-lease ' + name, leading = false, claimed = false, asking = false;
    var first = true, written = 0;
    function read() {
      var lease = parse(store.getItem(key));
      return lease && typeof lease.id === 'string' && typeof lease.until === 'number' ? lease : null;
    }
    function write() {
      written = Date.now();
      try {
        store.setItem(key, JSON.stringify({ id: tab, until: written + LEASE_MS }));
      } catch (e) { /* full or denied */ }
    }
    function confirm() {
      claimed = false;
      var lease = read(), won = !!(lease && lease.id === tab);
      if (won && !leading) {
        leading = true;
        lead();
      } else if (!won && leading) {
        leading = false; // another tab's claim came last
        stepDown();
      }
    }
    function claim() {
      claimed = true;
      write();
      later(confirm, SETTLE_MS);
    }
    var election = {
      /** Renews the lease, or claims it when it is free (or held by `gone`, a tab that resigned). */
      check: function (gone) {
        var lease, now = Date.now();
        try { lease = read(); } catch (e) { return; }
        if (leading) {
          if (lease && lease.id !== tab && lease.until > now) {
            leading = false;
            stepDown();
          } else {
            write();
          }
        } else if (!claimed && !asking && (!lease || lease.id === tab || lease.id === gone)) {
          claim();
          if (!lease && first) {
            // No lease at all when this tab first looks: it is most likely the origin's only
            // tab (another one's would be there, if lapsed), so it leads at once rather
            // than after SETTLE_MS; should another have claimed too, the confirmation
            // makes one of them step down.
            leading = true;
            lead();
          }
        } else if (!claimed && !asking && lease.until <= now) {
          // Lapsed: the leader may only be throttled. It takes over only if the leader
          // does not answer (and so renew) in time.
          asking = true;
          ask(function (answered) {
            asking = false;
            var again = read();
            if (!answered && !leading && !claimed && (!again || again.until <= Date.now())) { claim(); }
          });
        }
        first = false;
      },
      /** The leader handled an event: it lives, and renews its lease (at most twice a RENEW_MS). */
      renew: function () {
        if (leading && Date.now() - written >= RENEW_MS / 2) { election.check(null); }
      },
      /** Gives the lease up (the page goes), so that another tab need not wait for it to lapse. */
      resign: function () {
        if (!leading) { return; }
        leading = false;
        try {
          var lease = read();
          if (lease && lease.id === tab) { store.removeItem(key); }
        } catch (e) { /* denied */ }
      }
    };
    (function renew() {
      election.check(null);
      // Followers look a little less often than the leader renews, at random, so that the
      // tabs of a lapsed lease do not all claim it at once.
      later(renew, leading ? RENEW_MS : RENEW_MS + Math.floor(Math.random() * RENEW_MS));
    }());
    return election;
  }

  /**
   * The hub in one tab elected leader; the others reach it over a BroadcastChannel (or,
   * without one, over `storage` events). The leader is the tab that holds the Web Lock
   * `cascade <key>`, or without Web Locks the lease in localStorage (see leaseElection).
   * When the leader goes, the lock (or lease) passes to another tab, which starts a hub of
   * its own and tells the others to join it; null where the tabs cannot elect or talk.
   */
  function leaderLink(client, key) {
    var locks = root.navigator && root.navigator.locks;
    var useLocks = !!(locks && typeof locks.request === 'function' && typeof root.Promise === 'function');
    if (!useLocks && !localStore()) { return null; }
    var name = 'cascade ' + key, tab = client.tabId, closed = false, hub = null, election = null;
    var answered = null; // while a follower asks whether the leader lives: called on any word from it
    var bus = typeof root.BroadcastChannel === 'function'
      ? new root.BroadcastChannel(name) : storageBus(name);
    if (!bus) { return null; }
    var post = tabPost(client, function (msg) {
      if (hub) {
        soon(function () { if (hub) { hub.receive(msg); } });
      } else {
        msg.to = 'hub';
        bus.postMessage(msg);
      }
    });
    var link = {
      kind: 'leader',
      onmessage: noop,
      send: function (msg) {
        msg.tab = tab;
        post(msg);
      },
      close: function () {
        if (closed) { return; }
        link.send({ op: 'leave' });
        closed = true;
        // A leader keeps serving the other tabs until its page goes.
        if (!hub) { bus.close(); }
      }
    };
    function deliver(msg) {
      if (!closed) { soon(function () { link.onmessage(msg); }); }
    }
    /** Any event the leader handles renews its lease: its timers may sleep for a minute. */
    function renew() {
      if (hub && election) { election.renew(); }
    }
    bus.onmessage = function (event) {
      var msg = event.data || {};
      if (msg.to === 'hub') {
        renew();
        if (hub) { hub.receive(msg); }
      } else if (msg.to === tab || msg.to === '*') {
        // The leader gave up its lease: claim it now rather than when it lapses.
        if (msg.op === 'resign' && election) { election.check(msg.from); }
        if (msg.op !== 'resign' && answered) { answered(); }
        // The hub asks whether this tab lives: the answer comes from a message handler,
        // which runs at once even where the tab's timers are throttled.
        if (msg.op === 'ping' && !closed && !hub) { link.send({ op: 'alive' }); }
        if (!closed) { link.onmessage(msg); }
      }
    };
    function send(to, msg) {
      renew();
      msg.to = to;
      if (to === tab) { deliver(msg); } else { bus.postMessage(msg); }
    }
    function all(msg) {
      renew();
      deliver(msg);
      msg.to = '*';
      bus.postMessage(msg);
    }
    function lead() {
      var mine = hub = new Hub({ send: send, channel: function (channel, msg) { all(msg); }, all: all });
      hub.local = tab;
      client.shareRole = 'leader';
      all({ op: 'leader' });
      // Tabs that go without a word (crashed, or no pagehide) are let go.
      (function sweep() {
        if (hub !== mine) { return; }
        mine.sweep(Date.now());
        later(sweep, RENEW_MS);
      }());
    }
    /** Asks the leader whether it lives: `done(true)` on any word from it within ANSWER_MS. */
    function ask(done) {
      var timer = null;
      answered = function () {
        answered = null;
        cancel(timer);
        done(true);
      };
      timer = later(function () {
        if (!answered) { return; }
        answered = null;
        done(false);
      }, ANSWER_MS);
      bus.postMessage({ op: 'ping', to: 'hub', tab: tab });
    }
    if (useLocks) {
      try {
        locks.request(name, function () {
          lead();
          return new root.Promise(noop); // held while this page lives
        }).then(noop, noop);
      } catch (e) {
        bus.close();
        return null;
      }
      return link;
    }
    // A follower's heartbeat: the hub lets a silent tab's channels go, and the leader
    // renews its lease on each one, however rarely its own timers fire.
    (function beat() {
      if (closed) { return; }
      if (!hub) { link.send({ op: 'alive' }); }
      later(beat, HEARTBEAT_MS);
    }());
    election = leaseElection(name, tab, lead, function () {
      // Another tab leads now (this one's timers slept past its lease): it announces
      // itself, and this tab joins it like the others.
      var upstream = hub && hub.upstream;
      hub = null;
      client.shareRole = 'follower';
      if (upstream) { upstream.close(); }
      deliver({ op: 'leader' });
    }, ask);
    // Without Web Locks no hub learns that a tab went: each one says goodbye.
    onPageHide(function (event) {
      if (event && event.persisted) { return; }
      if (hub) {
        election.resign();
        bus.postMessage({ op: 'resign', to: '*', from: tab });
      } else {
        link.send({ op: 'leave' });
      }
      if (bus.close && typeof root.BroadcastChannel !== 'function') { bus.close(); }
    });
    return link;
  }

  /** Runs the hub when this file is a SharedWorker's script. */
  function serveWorker() {
    var hub = null, ports = {};
    function tabsOf(channel) {
      var out = [];
      for (var id in hub.tabs) {
        if (has(hub.tabs, id) && hub.tabs[id].channels.indexOf(channel) >= 0) { out.push(id); }
      }
      return out;
    }
    function send(id, msg) {
      if (ports[id]) {
        try { ports[id].postMessage(msg); } catch (e) { /* gone */ }
      }
    }
    var out = {
      send: send,
      channel: function (channel, msg) {
        var ids = tabsOf(channel);
        for (var i = 0; i < ids.length; i++) { send(ids[i], msg); }
      },
      all: function (msg) {
        for (var id in ports) { if (has(ports, id)) { send(id, msg); } }
      }
    };
    hub = new Hub(out);
    // Held while the hub has tabs: a tab that finds it held joins (and waits on) this hub's
    // connection rather than opening one of its own first (see Client._lookForHub).
    var locks = root.navigator && root.navigator.locks;
    var hubLock = { wanted: false, requested: false, release: null };
    function holdHubLock(wanted) {
      hubLock.wanted = wanted;
      if (!wanted && hubLock.release) {
        hubLock.release();
        hubLock.release = null;
        hubLock.requested = false;
      }
      if (!wanted || hubLock.requested || !locks || typeof locks.request !== 'function' ||
          typeof root.Promise !== 'function') {
        return;
      }
      hubLock.requested = true;
      try {
        locks.request('cascade-hub ' + root.name, function () {
          if (!hubLock.wanted) {
            hubLock.requested = false;
            return undefined; // the tabs left while it was asked for
          }
          return new root.Promise(function (resolve) { hubLock.release = resolve; });
        }).then(noop, noop);
      } catch (e) { /* no lock: every tab stands by first */ }
    }
    var join = hub.join, leave = hub.leave;
    hub.join = function (msg) {
      join.call(hub, msg);
      holdHubLock(true);
    };
    hub.leave = function (id) {
      delete ports[id];
      leave.call(hub, id);
      if (!Object.keys(hub.tabs).length) { holdHubLock(false); }
    };
    root.onconnect = function (event) {
      var port = event.ports[0];
      port.onmessage = function (e) {
        var msg = e.data || {};
        if (typeof msg.tab !== 'string') { return; }
        ports[msg.tab] = port;
        hub.receive(msg);
      };
      port.start();
    };
  }

  // ---------------------------------------------------------------------------------------

  /** Connects to the gateway at `url` ('' for this page's origin). */
  function connect(url, options) {
    return new Client(url, options);
  }

  if (IN_SHARED_WORKER) { serveWorker(); }

  return {
    connect: connect,
    Client: Client,
    version: VERSION,
    transports: ['websocket', 'sse', 'longpoll', 'poll']
  };
}));
