#!/usr/bin/env python3
"""The classic Socket.IO chat's server logic, as a Cascade backend (standard library only).

Cascade calls this backend's hooks (docs/HOOKS.md); this backend calls Cascade's server
API with an API key. Nothing of the chat's logic lives in the gateway:

- login by name: the connect hook reads `?name=` and makes it the session's user, so the
  gateway counts it as authenticated and `user:<name>` (private messages) is readable;
- messages: a client publishes `{"text": ...}` to `chat` or a room it joined; the publish
  hook checks it and the gateway adds the trusted sender (`from`);
- broadcast to everyone but the sender: the `say` RPC publishes to `chat` with
  `exclude_client` set to the caller's client id;
- private messages: the `whisper` RPC publishes to `user:<to>`;
- rooms: the `join` and `leave` RPCs put the user into a room and take them out with
  `POST /subscribe` and `POST /unsubscribe` (every session of the user, every node), and
  tell the room;
- who is online: the `online` RPC answers from `GET /presence`;
- history: the gateway keeps it; a client resumes from its cursor.

The same logic serves a Socket.IO page (examples/socketio/, docs/SOCKETIO.md): its socket
connects with no name and gets a guest user of its own (`guest_<client id>`), then
`socket.emit('login', name)` calls the `login` RPC, which records the name for that user;
an emit's arguments arrive as `params`, an array; every publish names its Socket.IO
`event` (`msg`).

Run (see README.md beside this file):

    CASCADE_API_KEY=dev-key CASCADE_HOOKS_SECRET=dev-hooks python3 examples/chat/backend.py

Environment: CHAT_LISTEN (127.0.0.1:3000), CASCADE_URL (http://127.0.0.1:8080),
CASCADE_API_KEY (the gateway's `api_keys`), CASCADE_HOOKS_SECRET (the gateway's
`hooks.secret`; unsigned calls are refused when it is set).
"""

import hashlib
import hmac
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GATEWAY = os.environ.get("CASCADE_URL", "http://127.0.0.1:8080").rstrip("/")
API_KEY = os.environ.get("CASCADE_API_KEY", "")
SECRET = os.environ.get("CASCADE_HOOKS_SECRET", "").encode()
LISTEN = os.environ.get("CHAT_LISTEN", "127.0.0.1:3000")

NAME = re.compile(r"^[a-z0-9_]{1,32}$")
# Socket.IO guests' names, after their `login`: user -> name, name -> user.
NAMES = {}
USERS = {}
# The rooms each user joined (this process's memory: a real backend keeps it in its
# database), so that a client asking for one again is allowed.
JOINED = {}
LOCK = threading.Lock()
ROOM = re.compile(r"^[a-z0-9_]{1,32}$")
MAX_TEXT = 2000
# The largest hook body read: the gateway's own are far smaller.
MAX_BODY = 256 * 1024


class Refused(Exception):
    """A refusal the client receives with this code and message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def verified(timestamp, signature, body):
    """Whether a hook call is the gateway's: its HMAC, within five minutes."""
    if not SECRET:
        return True
    try:
        if abs(time.time() - int(timestamp)) > 300:
            return False
    except (TypeError, ValueError):
        return False
    mac = hmac.new(SECRET, timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + mac.hexdigest(), signature or "")


def gateway(method, path, body=None):
    """Calls the gateway's server API with the API key; the parsed JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(GATEWAY + path, data=data, method=method)
    request.add_header("X-Cascade-API-Key", API_KEY)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=3) as answer:
            return json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as err:
        raise Refused("backend_failed", f"the gateway answered {err.code}") from err
    except (urllib.error.URLError, OSError) as err:
        raise Refused("backend_failed", "the gateway is not reachable") from err


def publish(channel, data, exclude_client=None):
    # `event`: what a Socket.IO client listens for; Cascade's own clients ignore it.
    body = {"channel": channel, "event": "msg", "data": data}
    if exclude_client:
        body["exclude_client"] = exclude_client
    return gateway("POST", "/publish", body)


def text_of(params):
    text = params.get("text") if isinstance(params, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise Refused("bad_text", "say something")
    if len(text) > MAX_TEXT:
        raise Refused("bad_text", f"at most {MAX_TEXT} characters")
    return text


def room_of(params):
    room = params.get("room") if isinstance(params, dict) else None
    if not isinstance(room, str) or not ROOM.match(room):
        raise Refused("bad_room", "a room is 1 to 32 of a-z 0-9 _")
    return "room:" + room


def on_connect(event):
    """Login by name: `?name=alice` on the client's first request; a Socket.IO socket
    without one is a guest until its `login`."""
    name = (event.get("query") or {}).get("name", "").lower()
    if not name and event.get("transport", "").startswith("socketio"):
        return {"user": "guest_" + event["client"], "channels": ["chat"]}
    if not NAME.match(name):
        raise Refused("bad_name", "a name is 1 to 32 of a-z 0-9 _")
    return {"user": name, "channels": ["chat"], "meta": {"name": name}}


def on_subscribe(event):
    # Rooms are joined through the `join` RPC (the backend subscribes the user), never
    # by asking; a client asking again for a room its user joined (a polling client
    # does on every request) is allowed. Anything else the channel rules allowed is fine.
    channel = event["channel"]
    if channel.startswith("room:"):
        with LOCK:
            joined = channel in JOINED.get(event.get("user"), set())
        if not joined:
            raise Refused("join_first", "join the room with the join call")
    return {}


def on_publish(event):
    """A client's own publish (the gateway adds the trusted `from`): text only."""
    data = event.get("data")
    text_of(data)
    if set(data) - {"text"}:
        raise Refused("bad_text", "a message is {\"text\": ...}")
    return {}


def on_rpc(event):
    user, client = event.get("user"), event.get("client")
    method, params = event["method"], event.get("params") or {}
    if not user:
        raise Refused("login_first", "log in with ?name=")
    if isinstance(params, list):
        # A Socket.IO emit: its arguments. `login` takes a name; the others one object.
        if method == "login":
            return login(user, params[0] if params else None)
        params = params[0] if params and isinstance(params[0], dict) else {}
    with LOCK:
        shown = NAMES.get(user, user)
    if method == "say":
        # Everyone but the sender: the sender shows its own line at once.
        answer = publish("chat", {"user": shown, "text": text_of(params)}, client)
        return {"offset": answer.get("offset")}
    if method == "whisper":
        to = params.get("to") if isinstance(params, dict) else None
        if not isinstance(to, str) or not NAME.match(to):
            raise Refused("bad_name", "whisper to a user's name")
        with LOCK:
            to_user = USERS.get(to, to)
        publish("user:" + to_user, {"user": shown, "private": True, "text": text_of(params)})
        return {}
    if method == "join":
        channel = room_of(params)
        with LOCK:
            JOINED.setdefault(user, set()).add(channel)
        gateway("POST", "/subscribe", {"user": user, "channel": channel})
        publish(channel, {"user": shown, "joined": True})
        return {"channel": channel}
    if method == "leave":
        channel = room_of(params)
        publish(channel, {"user": shown, "left": True})
        with LOCK:
            JOINED.get(user, set()).discard(channel)
        gateway("POST", "/unsubscribe", {"user": user, "channel": channel})
        return {"channel": channel}
    if method == "tell":
        channel = room_of(params)
        publish(channel, {"user": shown, "text": text_of(params)}, client)
        return {}
    if method == "online":
        channel = room_of(params) if params.get("room") else "chat"
        query = urllib.parse.urlencode({"channel": channel})
        presence = gateway("GET", "/presence?" + query)
        with LOCK:
            users = sorted({NAMES.get(c["user"], c["user"])
                            for c in presence.get("clients", []) if c.get("user")})
        return {"channel": channel, "users": users}
    raise Refused("no_such_call", "calls: say, whisper, join, leave, tell, online")


def login(user, name):
    """A Socket.IO guest names itself: private messages to the name reach its user."""
    if not isinstance(name, str) or not NAME.match(name.lower()):
        raise Refused("bad_name", "a name is 1 to 32 of a-z 0-9 _")
    name = name.lower()
    with LOCK:
        if USERS.get(name, user) != user:
            raise Refused("name_taken", f"{name} is logged in elsewhere")
        NAMES[user] = name
        USERS[name] = user
    return {"name": name}


def on_disconnect(event):
    return {}


EVENTS = {
    "connect": on_connect,
    "subscribe": on_subscribe,
    "publish": on_publish,
    "rpc": on_rpc,
    "disconnect": on_disconnect,
}


class Hooks(BaseHTTPRequestHandler):
    """`POST /cascade/{event}`: the gateway's hook calls."""

    def do_POST(self):
        prefix, _, event = self.path.rpartition("/")
        handler = EVENTS.get(event) if prefix == "/cascade" else None
        length = int(self.headers.get("Content-Length") or 0)
        if handler is None or length > MAX_BODY:
            return self.answer(404, {"error": {"code": "not_found", "message": self.path}})
        body = self.rfile.read(length)
        if not verified(self.headers.get("X-Cascade-Timestamp"),
                        self.headers.get("X-Cascade-Signature"), body):
            return self.answer(401, {"error": {"code": "bad_signature", "message": "unsigned"}})
        try:
            result = handler(json.loads(body))
        except Refused as refusal:
            return self.answer(200, {"error": {"code": refusal.code, "message": refusal.message}})
        except (ValueError, KeyError, TypeError) as err:
            return self.answer(200, {"error": {"code": "bad_call", "message": str(err)[:200]}})
        self.answer(200, {"result": result})

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        if os.environ.get("CHAT_LOG"):
            sys.stderr.write("chat: " + fmt % args + "\n")


def main():
    host, _, port = LISTEN.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Hooks)
    # The port actually bound, for a caller that asked for port 0.
    print(f"chat backend on http://{host}:{server.server_address[1]}/cascade", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
