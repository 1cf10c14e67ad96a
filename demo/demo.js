/*
 * The Cascade chat demo: broadcast on `chat`, private messages on `user:<name>`, rooms on
 * `room:<name>`. Presence is plain messages on `chat` (online / here / offline), so the
 * demo needs nothing from the gateway beyond publish and subscribe.
 *
 * With `?backend` in the page's URL it is the front of the example chat backend
 * (examples/chat): the connect hook logs in by name, rooms are joined and told through the
 * backend's calls (rpc), the sender is the gateway's trusted `from`, and who is online
 * comes from presence.
 *
 * ES5, like the client, so that it runs wherever the client does.
 */
(function () {
  'use strict';

  var NAME = /^[A-Za-z0-9_\-]{1,24}$/;
  var RUNG_LABELS = {
    websocket: 'WebSocket',
    sse: 'Server-Sent Events',
    longpoll: 'long polling',
    poll: 'short polling'
  };

  var backend = /[?&]backend(?:[=&]|$)/.test(location.search);
  var me = null;
  var token = null;       // a client token, to read this user's private messages (user:<name>)
  var client = null;
  var conversations = {}; // key -> {key, kind, name, channel, title, items: [], unread}
  var order = [];         // conversation keys, sidebar order
  var current = 'everyone';
  var people = {};        // name -> {online, transport}

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }

  function hue(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) { h = (h * 31 + name.charCodeAt(i)) % 360; }
    return h;
  }

  function avatar(node, name) {
    node.textContent = name.charAt(0).toUpperCase();
    node.style.background = 'hsl(' + hue(name) + ', 55%, 48%)';
  }

  function clock(ts) {
    var d = ts ? new Date(ts) : new Date();
    var m = d.getMinutes();
    return d.getHours() + ':' + (m < 10 ? '0' : '') + m;
  }

  // --- conversations ---------------------------------------------------------------------

  function conversation(key, kind, name, channel) {
    if (!conversations[key]) {
      conversations[key] = {
        key: key,
        kind: kind,
        name: name,
        channel: channel,
        title: kind === 'dm' ? '@ ' + name : '# ' + name,
        items: [],
        unread: 0
      };
      order.push(key);
      // Someone who writes privately is someone, even before their presence arrives.
      if (kind === 'dm' && !people[name]) { people[name] = { online: true, transport: null }; }
      renderSidebar();
    }
    return conversations[key];
  }

  /** Adds an item (a message or a note) to a conversation and shows it if it is open. */
  function add(conv, item) {
    conv.items.push(item);
    if (conv.key === current) {
      $('messages').appendChild(renderItem(item));
      scrollDown();
    } else if (item.kind === 'message' && item.from !== me) {
      conv.unread += 1;
      renderSidebar();
    }
    return item;
  }

  function note(conv, text) {
    add(conv, { kind: 'note', text: text, ts: Date.now() });
  }

  function renderItem(item) {
    if (item.kind === 'note') {
      var li = el('li', 'note', item.text);
      return li;
    }
    var row = el('li', 'message' + (item.from === me ? ' mine' : '') + (item.pending ? ' pending' : ''));
    var face = el('div', 'avatar small');
    avatar(face, item.from);
    var body = el('div', 'body');
    var meta = el('div', 'meta');
    meta.appendChild(el('span', 'author', item.from === me ? 'you' : item.from));
    if (item.transport) { meta.appendChild(el('span', 'via rung-' + item.transport, item.transport)); }
    meta.appendChild(el('span', 'time', clock(item.ts)));
    body.appendChild(meta);
    body.appendChild(el('div', 'text', item.text));
    row.appendChild(face);
    row.appendChild(body);
    item.node = row;
    return row;
  }

  function scrollDown() {
    var list = $('messages');
    list.scrollTop = list.scrollHeight;
  }

  function open(key) {
    var conv = conversations[key];
    if (!conv) { return; }
    current = key;
    conv.unread = 0;
    $('title').textContent = conv.title;
    $('subtitle').textContent = conv.kind === 'dm' ? 'private, on user:' + conv.name
      : 'channel ' + conv.channel;
    $('leave-room').hidden = conv.kind !== 'room';
    $('text').placeholder = conv.kind === 'dm' ? 'Message ' + conv.name + ' privately'
      : conv.kind === 'room' ? 'Message ' + conv.title : 'Message everyone';
    if (conv.kind === 'dm' && !token && !backend && !conv.warned) {
      conv.warned = true;
      note(conv, 'Private messages need a token, and this gateway signed none for you (its ' +
        '/demo/login needs token.hmac_secret): user:' + conv.name + ' is readable by ' + conv.name +
        ' only. Log in again with a token from `cascade token --sub ' + me + '`.');
    }
    var list = $('messages');
    list.innerHTML = '';
    for (var i = 0; i < conv.items.length; i++) { list.appendChild(renderItem(conv.items[i])); }
    scrollDown();
    renderSidebar();
    $('text').focus();
  }

  function renderSidebar() {
    var channels = $('channels'), peopleList = $('people'), i, key, conv;
    channels.innerHTML = '';
    for (i = 0; i < order.length; i++) {
      conv = conversations[order[i]];
      if (conv.kind !== 'dm') { channels.appendChild(sidebarItem(conv, conv.title)); }
    }
    peopleList.innerHTML = '';
    var names = Object.keys(people).sort();
    for (i = 0; i < names.length; i++) {
      key = 'dm:' + names[i];
      conv = conversations[key];
      var item = sidebarItem(conv || { key: key, unread: 0 }, names[i]);
      item.setAttribute('data-person', names[i]);
      var dot = el('span', 'dot' + (people[names[i]].online ? ' online' : ''));
      item.insertBefore(dot, item.firstChild);
      var rung = people[names[i]].transport;
      if (rung) { item.appendChild(el('span', 'via rung-' + rung, rung)); }
      peopleList.appendChild(item);
    }
    $('nobody').hidden = names.length > 0;
  }

  function sidebarItem(conv, label) {
    var li = el('li', conv.key === current ? 'active' : '');
    li.setAttribute('data-key', conv.key);
    li.appendChild(el('span', 'label', label));
    if (conv.unread) { li.appendChild(el('span', 'unread', String(conv.unread))); }
    li.onclick = function () {
      var key = li.getAttribute('data-key');
      var name = li.getAttribute('data-person');
      if (name && !conversations[key]) { conversation(key, 'dm', name, 'user:' + name); }
      open(key);
    };
    return li;
  }

  // --- the wire ----------------------------------------------------------------------------

  /**
   * Publishes `data` from this user. What goes to a channel this tab follows comes back
   * like anyone else's message, in channel order; a private message does not (the sender
   * does not follow the recipient's inbox), so it is shown when acknowledged.
   */
  function send(data, channel, conv) {
    if (backend) { sendThroughBackend(data, conv); return; }
    data.from = me;
    data.transport = client.transport;
    client.publish(channel, data, function (err) {
      if (err) {
        note(conv, 'Not sent (' + err.code + '): ' + (data.text || data.type));
      } else if (data.type === 'text' && conv.kind === 'dm') {
        add(conv, { kind: 'message', from: me, text: data.text, ts: Date.now(), transport: data.transport });
      }
    });
  }

  /** A message on a channel this tab follows. */
  function received(data, message, conv) {
    if (!data || typeof data.from !== 'string') { return; }
    var person = data.from !== me && people[data.from];
    if (data.transport && person && person.transport !== data.transport) {
      person.transport = data.transport;
      renderSidebar();
    }
    switch (data.type) {
      case 'text':
        add(conv, {
          kind: 'message',
          from: data.from,
          text: String(data.text || ''),
          ts: message.ts,
          transport: data.transport
        });
        break;
      case 'online':
      case 'here':
        if (data.from !== me) {
          people[data.from] = { online: true, transport: data.transport || null };
          renderSidebar();
          if (data.type === 'online') {
            note(conversations.everyone, data.from + ' joined');
            // Tell the newcomer who is here.
            send({ type: 'here' }, 'chat', conversations.everyone);
          }
        }
        break;
      case 'offline':
        if (people[data.from]) {
          people[data.from].online = false;
          renderSidebar();
          note(conversations.everyone, data.from + ' left');
        }
        break;
      case 'join':
        if (data.from !== me) { note(conv, data.from + ' joined ' + conv.title); }
        break;
      case 'leave':
        if (data.from !== me) { note(conv, data.from + ' left ' + conv.title); }
        break;
      default:
        break;
    }
  }

  /**
   * The backend's way: a line to everyone is the client's own publish (the gateway adds
   * `from`); a room's or a private one is a call, whose answer shows it here, since the
   * backend leaves the sender out.
   */
  function sendThroughBackend(data, conv) {
    if (data.type !== 'text') { return; }
    var done = function (err) {
      if (err) {
        note(conv, 'Not sent (' + err.code + '): ' + data.text);
      } else if (conv.kind !== 'everyone') {
        add(conv, { kind: 'message', from: me, text: data.text, ts: Date.now(), transport: client.transport });
      }
    };
    if (conv.kind === 'everyone') {
      client.publish('chat', { text: data.text }, done);
    } else if (conv.kind === 'room') {
      client.rpc('tell', { room: conv.name, text: data.text }, done);
    } else {
      client.rpc('whisper', { to: conv.name, text: data.text }, done);
    }
  }

  /** A message from the example backend (or a client's own, with `from`) in demo terms. */
  function fromBackend(data, message) {
    if (!data || typeof data !== 'object') { return null; }
    var sender = typeof data.user === 'string' ? data.user
      : message.from && message.from.user;
    if (!sender) { return null; }
    if (data.joined) { return { type: 'join', from: sender }; }
    if (data.left) { return { type: 'leave', from: sender }; }
    if (typeof data.text === 'string') { return { type: 'text', from: sender, text: data.text }; }
    return null;
  }

  /** Every message of the backend mode, server-side subscriptions included. */
  function routeFromBackend(message) {
    var data = fromBackend(message.data, message);
    if (!data) { return; }
    var channel = message.channel, conv = null;
    if (channel === 'chat') {
      conv = conversations.everyone;
    } else if (channel.indexOf('room:') === 0) {
      var room = channel.slice(5);
      conv = conversations['room:' + room];
      // The backend subscribed this user (this tab or another of theirs joined).
      if (!conv && data.type === 'join' && data.from === me) {
        conv = conversation('room:' + room, 'room', room, channel);
      }
    } else if (channel === 'user:' + me && data.type === 'text') {
      conv = conversation('dm:' + data.from, 'dm', data.from, 'user:' + data.from);
    }
    if (conv) { received(data, message, conv); }
    if (channel === 'chat' || data.type === 'join' || data.type === 'leave') { refreshPeople(); }
  }

  /** Who is online: presence of `chat`, with each client's rung. */
  function refreshPeople() {
    client.presence('chat', function (err, answer) {
      if (err) { return; }
      var online = {};
      for (var i = 0; i < answer.clients.length; i++) {
        var c = answer.clients[i];
        if (c.user && c.user !== me) { online[c.user] = c.transport; }
      }
      for (var name in people) {
        if (people.hasOwnProperty(name) && !online.hasOwnProperty(name)) { people[name].online = false; }
      }
      for (var user in online) {
        if (online.hasOwnProperty(user)) { people[user] = { online: true, transport: online[user] }; }
      }
      renderSidebar();
    });
  }

  function follow(conv) {
    client.subscribe(conv.channel, function (data, message) { received(data, message, conv); });
  }

  function joinRoom(name) {
    var key = 'room:' + name;
    if (conversations[key]) { open(key); return; }
    if (backend) {
      client.rpc('join', { room: name }, function (err) {
        if (err) { note(conversations[current], 'Could not join ' + name + ' (' + err.code + ')'); return; }
        var conv = conversation(key, 'room', name, 'room:' + name);
        note(conv, 'You joined # ' + name + ' (the backend subscribed you).');
        open(key);
      });
      return;
    }
    var conv = conversation(key, 'room', name, 'room:' + name);
    follow(conv);
    note(conv, 'You joined ' + conv.title + '. Everyone in it sees what you write here.');
    send({ type: 'join' }, conv.channel, conv);
    open(key);
  }

  function leaveRoom(key) {
    var conv = conversations[key];
    if (!conv || conv.kind !== 'room') { return; }
    if (backend) {
      client.rpc('leave', { room: conv.name });
    } else {
      send({ type: 'leave' }, conv.channel, conv);
      client.unsubscribe(conv.channel);
    }
    delete conversations[key];
    order.splice(order.indexOf(key), 1);
    open('everyone');
  }

  function showTransport(name) {
    var status = $('status');
    if (name) {
      status.className = 'status live rung-' + name;
      status.textContent = 'connected over ' + RUNG_LABELS[name];
    } else {
      status.className = 'status connecting';
      status.textContent = 'reconnecting…';
    }
    var rungs = $('ladder').getElementsByTagName('li');
    for (var i = 0; i < rungs.length; i++) {
      rungs[i].className = rungs[i].getAttribute('data-rung') === name ? 'active rung-' + name : '';
    }
    document.body.setAttribute('data-transport', name || '');
  }

  function login(name, transport, withToken) {
    // The example backend knows lower-case names only.
    me = backend ? name.toLowerCase() : name;
    name = me;
    token = withToken || null;
    $('login').hidden = true;
    $('app').hidden = false;
    $('me-name').textContent = name;
    avatar($('me-avatar'), name);
    client = Cascade.connect('', {
      transports: transport ? [transport] : undefined,
      token: token || undefined,
      query: backend ? { name: name } : undefined
    });
    var everyone = conversation('everyone', 'everyone', 'everyone', 'chat');
    if (backend) {
      // The connect hook makes `name` this session's user and subscribes `chat`; the
      // inbox is readable by its owner; rooms arrive when the backend subscribes us.
      client.subscribe('user:' + name);
      client.on('message', routeFromBackend);
      client.on('connect', refreshPeople);
      // Presence has no join event on `chat` here: look again now and then.
      setInterval(refreshPeople, 3000);
    } else {
      follow(everyone);
    }
    if (token && !backend) {
      // The personal inbox: only its owner, proven by the token, may read it.
      client.subscribe('user:' + name, function (data, message) {
        if (!data || data.type !== 'text' || typeof data.from !== 'string') { return; }
        var conv = conversation('dm:' + data.from, 'dm', data.from, 'user:' + data.from);
        received(data, message, conv);
      });
    }
    client.on('error', function (err) {
      var where = conversations[current] || everyone;
      note(where, 'Gateway says: ' + err.code + (err.message ? ' (' + err.message + ')' : ''));
    });
    var announced = false;
    client.on('transport', showTransport);
    client.on('connect', function (info) {
      showTransport(info.transport);
      if (!announced && !backend) {
        announced = true;
        send({ type: 'online' }, 'chat', everyone);
      }
    });
    client.on('disconnect', function () { showTransport(null); });
    client.on('gap', function (gap) {
      var conv = null;
      for (var i = 0; i < order.length; i++) {
        if (conversations[order[i]].channel === gap.channel) { conv = conversations[order[i]]; }
      }
      note(conv || everyone, 'Some messages on ' + gap.channel + ' were lost (the gateway restarted).');
    });
    note(everyone, 'Welcome, ' + name + '. Messages here go to everyone on channel chat.');
    open('everyone');
    window.addEventListener('pagehide', function () {
      if (backend) { return; }
      var body = JSON.stringify({ channel: 'chat', data: { type: 'offline', from: me } });
      if (navigator.sendBeacon) { navigator.sendBeacon('/publish', body); }
    });
    window.cascadeDemo = { client: client, me: me };
  }

  // --- wiring --------------------------------------------------------------------------

  $('login-form').onsubmit = function (event) {
    event.preventDefault();
    var name = $('name').value.replace(/^\s+|\s+$/g, '');
    if (!NAME.test(name)) { $('name').focus(); return; }
    var transport = $('transport').value;
    var typed = $('token').value.replace(/\s+/g, '');
    if (typed || backend) { login(name, transport, typed || null); return; }
    // The dev gateway signs a token for the name (POST /demo/login); without one, chat
    // and rooms still work, private messages do not.
    var xhr = new XMLHttpRequest();
    xhr.open('POST', '/demo/login');
    xhr.setRequestHeader('Content-Type', 'application/json');
    xhr.onload = function () {
      var token = null;
      if (xhr.status === 200) {
        try { token = JSON.parse(xhr.responseText).token; } catch (e) { token = null; }
      }
      login(name, transport, token);
    };
    xhr.onerror = function () { login(name, transport, null); };
    xhr.send(JSON.stringify({ name: name }));
  };

  $('join-form').onsubmit = function (event) {
    event.preventDefault();
    var name = $('room').value.replace(/^\s+|\s+$/g, '');
    if (!NAME.test(name)) { return; }
    $('room').value = '';
    joinRoom(name);
  };

  $('leave-room').onclick = function () { leaveRoom(current); };

  $('composer').onsubmit = function (event) {
    event.preventDefault();
    var input = $('text'), text = input.value.replace(/^\s+|\s+$/g, '');
    var conv = conversations[current];
    if (!text || !conv) { return; }
    input.value = '';
    send({ type: 'text', text: text }, conv.channel, conv);
  };

  // ?name=alice&token=... prefill the form (handy with a token from `cascade token`).
  var given = /[?&]name=([A-Za-z0-9_\-]{1,24})/.exec(location.search);
  if (given) { $('name').value = given[1]; }
  var givenToken = /[?&]token=([A-Za-z0-9_\-.]+)/.exec(location.search);
  if (givenToken) { $('token').value = givenToken[1]; }
  $('name').focus();
}());
