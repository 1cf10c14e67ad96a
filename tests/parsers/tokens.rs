//! Tokens and tickets: arbitrary text never verifies, and neither does any mutation of a
//! valid token or ticket.

use cascade::auth::Auth;
use cascade::auth::token::{Claims, Tickets, Verifier, now_secs};
use cascade::config::Config;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::harness::{fuzz, hostile_text};

pub const SECRET: &[u8] = b"parsers-fuzz-secret-0123456789";

fn auth() -> Auth {
    let mut config = Config::from_sources("", Vec::<(String, String)>::new()).expect("config");
    config.token.hmac_secret = std::str::from_utf8(SECRET).expect("utf8").into();
    Auth::from_config(&config).expect("auth")
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, char),
    Delete(usize),
    Insert(usize, char),
    Truncate(usize),
    SwapSegments(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let char_ = prop_oneof![
        proptest::char::range('A', 'Z'),
        proptest::char::range('a', 'z'),
        proptest::char::range('0', '9'),
        Just('-'),
        Just('_'),
        Just('.'),
        Just('='),
        any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), char_.clone()).prop_map(|(i, c)| Mutation::Replace(i, c)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), char_).prop_map(|(i, c)| Mutation::Insert(i, c)),
        any::<usize>().prop_map(Mutation::Truncate),
        (0usize..3, 0usize..3).prop_map(|(a, b)| Mutation::SwapSegments(a, b)),
    ]
}

fn mutate(token: &str, mutation: &Mutation) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match *mutation {
        Mutation::Replace(i, c) => {
            let i = at(i, chars.len());
            chars[i] = c;
        }
        Mutation::Delete(i) => {
            let i = at(i, chars.len());
            chars.remove(i);
        }
        Mutation::Insert(i, c) => {
            let i = at(i, chars.len() + 1);
            chars.insert(i, c);
        }
        Mutation::Truncate(i) => chars.truncate(at(i, chars.len())),
        Mutation::SwapSegments(a, b) => {
            let mut parts: Vec<&str> = token.split('.').collect();
            let len = parts.len();
            parts.swap(a % len, b % len);
            return parts.join(".");
        }
    }
    chars.into_iter().collect()
}

fn claims() -> impl Strategy<Value = Claims> {
    (
        "[a-z0-9]{1,12}",
        1u64..100_000,
        prop::collection::vec("[a-z:*]{1,8}", 0..3),
        prop::collection::vec("[a-z:*]{1,8}", 0..3),
    )
        .prop_map(|(sub, ttl, channels, publish)| Claims {
            sub,
            exp: now_secs() + ttl,
            channels,
            publish,
        })
}

#[test]
fn tokens() {
    let auth = auth();
    let verifier = Verifier::hmac(SECRET).expect("verifier");
    let tickets = Tickets::new(SECRET, 30).expect("tickets");
    let tokenish = prop_oneof![
        hostile_text(),
        "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,50}",
        "eyJ[A-Za-z0-9_-]{0,60}\\.eyJ[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{43}",
    ];
    fuzz(
        "Auth::verify_token + Verifier + Tickets arbitrary",
        tokenish,
        |text| {
            for result in [auth.verify_token(&text), verifier.verify(&text)] {
                let err = result
                    .err()
                    .ok_or_else(|| TestCaseError::fail("accepted"))?;
                prop_assert_eq!(err.code(), "token_invalid");
            }
            prop_assert!(tickets.verify(&text).is_err());
            Ok(())
        },
    );
    fuzz(
        "Verifier::verify mutated tokens",
        (claims(), mutation()),
        |(claims, mutation)| {
            let token = auth.sign(&claims).map_err(TestCaseError::fail)?;
            prop_assert_eq!(verifier.verify(&token).ok(), Some(claims.clone()));
            let mutated = mutate(&token, &mutation);
            if mutated != token {
                prop_assert!(
                    verifier.verify(&mutated).is_err(),
                    "{:?} of a valid token verified: {}",
                    mutation,
                    mutated
                );
                prop_assert!(auth.verify_token(&mutated).is_err());
            }
            Ok(())
        },
    );
    // The signature's last base64url character carries padding bits: no other spelling of
    // it may verify (a token has exactly one valid text).
    let token = auth
        .sign(&Claims {
            sub: "alice".into(),
            exp: now_secs() + 60,
            channels: vec![],
            publish: vec![],
        })
        .expect("sign");
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (i, original) in token.char_indices().filter(|(_, c)| *c != '.') {
        for c in alphabet.chars().filter(|c| *c != original) {
            let mut other = token.clone();
            other.replace_range(i..i + 1, &c.to_string());
            assert!(verifier.verify(&other).is_err(), "{other} verified");
        }
    }
    println!(
        "fuzz Verifier::verify every one-character substitution: {} cases",
        (token.len() - 2) * 63
    );
    fuzz(
        "Tickets::verify mutated tickets",
        (claims(), mutation()),
        |(claims, mutation)| {
            let ticket = tickets
                .issue(&claims)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(tickets.verify(&ticket).is_ok());
            let mutated = mutate(&ticket, &mutation);
            if mutated != ticket {
                prop_assert!(
                    tickets.verify(&mutated).is_err(),
                    "{:?}: {}",
                    mutation,
                    mutated
                );
            }
            Ok(())
        },
    );
}
