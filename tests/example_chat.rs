//! The example chat backend (examples/chat/backend.py) against a real gateway: its hooks,
//! its calls and the server API it uses, over real WebSockets. The backend runs as a child
//! process (Python's standard library only), as a reader would run it.

mod support;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const API_KEY: &str = "example-chat-key";
const HOOKS_SECRET: &str = "example-chat-hooks-secret";

/// The gateway and the backend, each on a free port; the backend is stopped when dropped.
struct Chat {
    addr: std::net::SocketAddr,
    backend: Child,
    _gateway: tokio::task::JoinHandle<()>,
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.backend.kill();
        let _ = self.backend.wait();
    }
}

impl Chat {
    async fn start() -> Chat {
        // The gateway's port first: the backend calls it back.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chat/backend.py");
        let mut backend = Command::new("python3")
            .arg(script)
            .env("CHAT_LISTEN", "127.0.0.1:0")
            .env("CASCADE_URL", format!("http://{addr}"))
            .env("CASCADE_API_KEY", API_KEY)
            .env("CASCADE_HOOKS_SECRET", HOOKS_SECRET)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the example backend");
        let stdout = backend.stdout.take().unwrap();
        let first = within(tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        }))
        .await
        .expect("reader")
        .expect("the backend says where it listens");
        let first = first.trim_end().to_owned();
        let hooks_url = first
            .rsplit(' ')
            .next()
            .expect("chat backend on <url>")
            .to_owned();

        let mut config = test_config();
        config.api_keys = vec![API_KEY.into()];
        config.hooks.url = hooks_url;
        config.hooks.events = cascade::config::HookEvent::ALL.to_vec();
        config.hooks.secret = HOOKS_SECRET.into();
        let room = cascade::auth::rules::NamespaceConfig {
            presence: true,
            ..Default::default()
        };
        config.namespaces.insert("room".into(), room);
        let app = cascade::app::App::new(config).expect("app");
        let gateway = tokio::spawn(cascade::server::run(listener, app));
        Chat {
            addr,
            backend,
            _gateway: gateway,
        }
    }

    async fn user(&self, name: &str) -> User {
        let url = format!("ws://{}/ws?name={name}", self.addr);
        let (ws, _) = within(tokio_tungstenite::connect_async(url))
            .await
            .expect("websocket");
        let mut user = User {
            ws,
            next_id: 1,
            held: Default::default(),
        };
        let session = user.recv().await;
        assert_eq!(session["op"], "session", "{session}");
        user
    }
}

/// One chat user's WebSocket.
struct User {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Frames that came while a call waited for its result, in order.
    held: std::collections::VecDeque<Value>,
}

impl User {
    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Frame::text(frame.to_string()))
            .await
            .expect("send");
    }

    /// The next JSON frame (held ones first), pings skipped.
    async fn recv(&mut self) -> Value {
        if let Some(frame) = self.held.pop_front() {
            return frame;
        }
        loop {
            let frame = within(self.ws.next()).await.expect("open").expect("frame");
            if let Frame::Text(text) = frame {
                return serde_json::from_str(&text).expect("json");
            }
        }
    }

    /// The next frame of op `op`; others (messages of other channels, acks) are skipped.
    async fn next(&mut self, op: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["op"] == op {
                return frame;
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        self.send(json!({"op":"subscribe","channels":[channel]}))
            .await;
        let reply = self.next("subscribed").await;
        assert_eq!(reply["channels"], json!([channel]), "{reply}");
    }

    /// Calls the backend; its result, or the error frame.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"op":"rpc","id":id,"method":method,"params":params}))
            .await;
        // Read past what is held: what the call itself causes (a server subscription,
        // a message) may come before its result, and is kept for later reads.
        loop {
            let frame = within(self.ws.next()).await.expect("open").expect("frame");
            let Frame::Text(text) = frame else { continue };
            let frame: Value = serde_json::from_str(&text).expect("json");
            if frame["id"] == id && (frame["op"] == "rpc_result" || frame["op"] == "error") {
                return frame;
            }
            self.held.push_back(frame);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_backend_runs_the_classic_chat() {
    let chat = Chat::start().await;

    // Log in by name: the connect hook refuses a bad one with its own code.
    let url = format!("ws://{}/ws?name=Not%20A%20Name", chat.addr);
    let refused = tokio_tungstenite::connect_async(url).await;
    match refused {
        Ok((mut ws, _)) => {
            let close = within(async {
                loop {
                    match ws.next().await {
                        Some(Ok(Frame::Close(close))) => return close,
                        Some(Ok(_)) => continue,
                        other => panic!("no close frame: {other:?}"),
                    }
                }
            })
            .await
            .expect("a close frame with a code");
            assert_eq!(u16::from(close.code), 4003);
            assert_eq!(close.reason.as_str(), "bad_name");
        }
        Err(err) => panic!("the handshake itself failed: {err}"),
    }

    let mut alice = chat.user("alice").await;
    let mut bob = chat.user("bob").await;
    alice.subscribe("chat").await;
    bob.subscribe("chat").await;

    // A client's own message carries the trusted sender.
    alice
        .send(json!({"op":"publish","id":99,"channel":"chat","data":{"text":"hello"}}))
        .await;
    let message = bob.next("message").await;
    assert_eq!(message["data"], json!({"text":"hello"}));
    assert_eq!(message["from"]["user"], "alice", "{message}");
    let own = alice.next("message").await;
    assert_eq!(own["data"], json!({"text":"hello"}));
    // The publish hook refuses what is not text.
    alice
        .send(json!({"op":"publish","id":100,"channel":"chat","data":{"html":"<b>"}}))
        .await;
    let error = alice.next("error").await;
    assert_eq!(error["code"], "bad_text", "{error}");

    // Everyone but the sender.
    let said = alice.call("say", json!({"text":"hi all but me"})).await;
    assert_eq!(said["op"], "rpc_result", "{said}");
    let message = bob.next("message").await;
    assert_eq!(
        message["data"],
        json!({"user":"alice","text":"hi all but me"})
    );
    alice
        .send(json!({"op":"publish","id":101,"channel":"chat","data":{"text":"after"}}))
        .await;
    let next = alice.next("message").await;
    assert_eq!(
        next["data"],
        json!({"text":"after"}),
        "alice was left out of her own broadcast: {next}"
    );

    // Private messages.
    bob.subscribe("user:bob").await;
    let whispered = alice
        .call("whisper", json!({"to":"bob","text":"psst"}))
        .await;
    assert_eq!(whispered["op"], "rpc_result", "{whispered}");
    let private = loop {
        let message = bob.next("message").await;
        if message["channel"] == "user:bob" {
            break message;
        }
    };
    assert_eq!(
        private["data"],
        json!({"user":"alice","private":true,"text":"psst"})
    );

    // Rooms: the backend subscribes bob, the room hears him join, presence lists him.
    let joined = bob.call("join", json!({"room":"lobby"})).await;
    assert_eq!(joined["result"]["channel"], "room:lobby", "{joined}");
    let subscribed = bob.next("subscribed").await;
    assert_eq!(
        subscribed["channels"],
        json!(["room:lobby"]),
        "{subscribed}"
    );
    assert_eq!(subscribed["server"], true);
    let hello = loop {
        let message = bob.next("message").await;
        if message["channel"] == "room:lobby" {
            break message;
        }
    };
    assert_eq!(hello["data"], json!({"user":"bob","joined":true}));
    let online = async {
        loop {
            let online = alice.call("online", json!({"room":"lobby"})).await;
            if online["result"]["users"] == json!(["bob"]) {
                return online;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let online = within(online).await;
    assert_eq!(online["result"]["channel"], "room:lobby");
    // A room is joined through the backend, never by asking.
    alice
        .send(json!({"op":"subscribe","channels":["room:lobby"]}))
        .await;
    let refused = alice.next("error").await;
    assert_eq!(refused["code"], "join_first", "{refused}");
}
