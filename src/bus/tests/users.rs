//! Contract tests of what issue 23 added to the bus, on every engine: the trusted sender
//! and `exclude_client` through the engine and history, presence with its join and leave
//! events, and the server API's commands reaching a user's streams.

use super::*;
use crate::bus::control::{Command, Control, Op};

contract!(
    the_sender_and_the_exclusion_travel_through_the_engine,
    presence_lists_streams_and_announces_joins_and_leaves,
    server_commands_reach_the_users_streams,
);

const ALICE: &str = "AAAAAAAAAAAAAAAAAAAAAA";
const BOB: &str = "BBBBBBBBBBBBBBBBBBBBBB";

fn member(client: &str, user: &str) -> Present {
    Present {
        user: Some(user.into()),
        client: crate::session::ClientId::parse(client).unwrap(),
        transport: "websocket".into(),
    }
}

async fn follower(bus: &Bus, channel: &Channel, client: &str, streams: bool) -> Subscription {
    let mut sub = bus.subscribe();
    sub.set_client(Some(member(client, client)), streams);
    sub.add(&cursor(channel, None)).await.unwrap();
    sub
}

async fn the_sender_and_the_exclusion_travel_through_the_engine(kind: Kind) {
    let bus = bus(kind).await;
    let room = Channel::parse("room:x").unwrap();
    let mut alice = follower(&bus, &room, ALICE, false).await;
    let mut bob = follower(&bus, &room, BOB, false).await;
    let (_, before) = bus.catch_up(&cursor(&room, None), None).await.unwrap();
    let publication = Publication {
        exclude: Some(Arc::from(ALICE)),
        ..Publication::data(data(1))
    }
    .from(Some("alice"), Some(ALICE));
    let sent = bus.publish_as(&room, publication).await.unwrap();
    bus.publish(&room, data(2)).await.unwrap();

    // Bob gets both, the first with its sender; Alice only the second, with no hole.
    let first = next_message(&mut bob).await;
    let json: serde_json::Value = serde_json::from_slice(first.json()).unwrap();
    assert_eq!(
        json["from"],
        serde_json::json!({"user":"alice","client":ALICE})
    );
    let second = next_message(&mut bob).await;
    assert!(serde_json::from_slice::<serde_json::Value>(second.json()).unwrap()["from"].is_null());
    let only = next_message(&mut alice).await;
    assert_eq!((only.offset, only.data()), (sent.offset + 1, &b"2"[..]));
    assert_eq!(alice.cursor(), bob.cursor());

    // History keeps both: a poll by Alice skips hers yet moves past it; Bob's has it.
    let from = before.position(&room).cloned();
    let (events, next) = bus
        .catch_up(&cursor(&room, from.clone()), Some(ALICE))
        .await
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(next.position(&room).unwrap().offset, sent.offset + 1);
    let (events, _) = bus
        .catch_up(&cursor(&room, from.clone()), Some(BOB))
        .await
        .unwrap();
    let Event::Message(read) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(read.json(), sent.json());
    assert!(read.excludes(ALICE));

    // A resuming stream of Alice's skips it in history too.
    let mut again = bus.subscribe();
    again.set_client(Some(member(ALICE, "alice")), false);
    again.add(&cursor(&room, from)).await.unwrap();
    assert_eq!(next_message(&mut again).await.offset, sent.offset + 1);
}

async fn presence_lists_streams_and_announces_joins_and_leaves(kind: Kind) {
    let bus = bus(kind).await;
    let room = Channel::parse("room:p").unwrap();
    let mut watcher = bus.subscribe();
    watcher.add(&cursor(&room, None)).await.unwrap();
    let alice = follower(&bus, &room, ALICE, true).await;
    let join = next_message(&mut watcher).await;
    let json: serde_json::Value = serde_json::from_slice(join.json()).unwrap();
    assert_eq!(json["presence"], "join");
    assert_eq!(json["from"]["client"], ALICE);
    let listed = bus.presence(&room).await.unwrap();
    assert_eq!(listed, vec![member(ALICE, ALICE)]);

    // A poll makes its client present too, once.
    bus.polled(&cursor(&room, None), &member(BOB, "bob")).await;
    bus.polled(&cursor(&room, None), &member(BOB, "bob")).await;
    assert_eq!(next_message(&mut watcher).await.offset, join.offset + 1);
    assert_eq!(bus.presence(&room).await.unwrap().len(), 2);

    drop(alice);
    let leave = next_message(&mut watcher).await;
    let json: serde_json::Value = serde_json::from_slice(leave.json()).unwrap();
    assert_eq!(
        (json["presence"].as_str(), json["from"]["client"].as_str()),
        (Some("leave"), Some(ALICE))
    );
    let clients: Vec<String> = bus
        .presence(&room)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.client.to_string())
        .collect();
    assert_eq!(clients, vec![BOB.to_owned()]);
}

async fn server_commands_reach_the_users_streams(kind: Kind) {
    let bus = bus(kind).await;
    let lobby = Channel::parse("lobby").unwrap();
    let room = Channel::parse("room:s").unwrap();
    let mut alice = follower(&bus, &lobby, ALICE, true).await;
    // Its own join: the test buses announce presence everywhere.
    next_message(&mut alice).await;
    let command = |op, channel: Option<&Channel>| Command {
        op,
        user: ALICE.into(),
        channel: channel.map(|c| c.to_string()),
        start: None,
    };
    bus.command(&command(Op::Subscribe, Some(&room)))
        .await
        .unwrap();
    match next_event(&mut alice).await {
        Event::Control(Control::Subscribed(start)) => {
            assert!(start.position(&room).is_some(), "{start:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(alice.follows(&room));
    bus.publish(&room, data(7)).await.unwrap();
    let mut got = next_message(&mut alice).await;
    if got.data() == b"null" {
        // Its join to the room, announced as it was subscribed.
        got = next_message(&mut alice).await;
    }
    assert_eq!(got.data(), b"7");
    bus.command(&command(Op::Unsubscribe, Some(&room)))
        .await
        .unwrap();
    assert!(matches!(
        next_event(&mut alice).await,
        Event::Control(Control::Unsubscribed(c)) if c == room
    ));
    assert!(!alice.follows(&room));
    bus.command(&command(Op::Disconnect, None)).await.unwrap();
    assert!(matches!(
        next_event(&mut alice).await,
        Event::Control(Control::Disconnected)
    ));
    assert!(bus.recent_commands(ALICE).disconnected);
    assert!(!bus.recent_commands("bob").disconnected);
}

async fn next_event(sub: &mut Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event within the deadline")
        .expect("not cut off")
}
