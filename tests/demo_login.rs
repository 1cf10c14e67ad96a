//! The demo's log-in by name: only with `demo = true`, and its token reads the user's own
//! personal channel and no one else's.

mod support;

use serde_json::{Value, json};
use support::*;

fn demo_config(demo: bool) -> cascade::config::Config {
    let mut config = test_config();
    config.demo = demo;
    config.token.hmac_secret = "demo-test-secret-0123456789".into();
    config
}

async fn login(server: &TestServer, name: &str) -> (u16, Value) {
    let response = http()
        .post(server.url("/demo/login"))
        .json(&json!({ "name": name }))
        .send()
        .await
        .expect("login");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn demo_login_gives_a_token_for_the_own_inbox_only() {
    let server = TestServer::start(demo_config(true)).await;
    let (status, body) = login(&server, "alice").await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let (own, _) = server
        .get_json(&format!("/poll?channels=user:alice&token={token}"))
        .await;
    assert_eq!(own, 200);
    let (other, body) = server
        .get_json(&format!("/poll?channels=user:bob&token={token}"))
        .await;
    assert_eq!(
        (other, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, body) = login(&server, "a,b").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_channel"))
    );
}

#[tokio::test]
async fn demo_login_does_not_exist_without_the_demo() {
    let server = TestServer::start(demo_config(false)).await;
    let (status, body) = login(&server, "alice").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

/// The log-in form tells the truth: private messages work without pasting a token, since
/// the form asks `/demo/login` for one signed for the name typed.
#[tokio::test]
async fn the_login_form_says_no_token_is_needed_for_private_messages() {
    let server = TestServer::start(demo_config(true)).await;
    let page = get_text(&server.url("/")).await;
    let form = &page[page.find("<form id=\"login-form\"").expect("form")..];
    let form = &form[..form.find("</form>").expect("end of form")];
    assert!(!form.contains("for private messages)"), "{form}");
    assert!(form.contains("/demo/login"), "{form}");
    let script = get_text(&server.url("/demo.js")).await;
    assert!(
        script.contains("'/demo/login'"),
        "the form asks for a token"
    );
    // And what the form promises works: the name's token reads its inbox.
    let (status, body) = login(&server, "carol").await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token");
    let (own, _) = server
        .get_json(&format!("/poll?channels=user:carol&token={token}"))
        .await;
    assert_eq!(own, 200);
}
