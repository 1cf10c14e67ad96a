"""python-socketio's client against Cascade's /socket.io/: a second implementation of the
protocol, so that the endpoint is not fitted to socket.io-client alone.

    sio_client.py URL NAME TRANSPORTS   (TRANSPORTS: websocket | polling | default)

Environment: CASCADE_API_KEY (to publish as a backend). Connects with `auth={"name"}`,
calls `echo` with an ack, receives a published `news` event and a private `msg` (the
test backend's `whisper` to itself), disconnects; prints one JSON line and exits 0, or
fails with a message.
"""

import json
import os
import sys
import threading
import urllib.request

import socketio

URL, NAME, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
TRANSPORTS = None if MODE == "default" else [MODE]
DEADLINE = 15


def publish(channel, event, data):
    body = json.dumps({"channel": channel, "event": event, "data": data}).encode()
    request = urllib.request.Request(URL + "/publish", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("X-Cascade-API-Key", os.environ["CASCADE_API_KEY"])
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


def main():
    client = socketio.Client(reconnection=False)
    got = {"news": [], "msg": []}
    arrived = threading.Event()

    def on(event):
        def handler(*args):
            got[event].append(args[0])
            arrived.set()

        client.on(event, handler)

    on("news")
    on("msg")
    client.connect(URL, auth={"name": NAME}, transports=TRANSPORTS, wait_timeout=DEADLINE)
    try:
        answer = client.call("echo", (1, {"two": 2}), timeout=DEADLINE)
        assert answer["params"] == [1, {"two": 2}], answer
        assert answer["user"] == NAME, answer
        assert answer["client"] == client.get_sid(), (answer, client.get_sid())
        publish("chat", "news", {"n": 7})
        client.call("whisper", {"to": NAME, "text": "to myself"}, timeout=DEADLINE)
        for _ in range(DEADLINE * 10):
            if got["news"] and got["msg"]:
                break
            arrived.wait(0.1)
            arrived.clear()
        assert got["news"] == [{"n": 7}], got
        assert got["msg"] == [{"from": NAME, "text": "to myself", "private": True}], got
        transport = client.transport()
    finally:
        client.disconnect()
    print(json.dumps({"ok": True, "transport": transport, "got": got}))


if __name__ == "__main__":
    main()
