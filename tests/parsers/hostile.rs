//! Hostile 1 MiB inputs: each parse completes quickly, errors, and holds a bounded
//! amount of heap (measured by the counting allocator in `harness`).

use std::time::Duration;

use cascade::auth::pattern::Pattern;
use cascade::auth::token::{Tickets, Verifier};
use cascade::protocol::{Channel, ClientFrame, Cursor};
use cascade::query::Query;
use cascade::transport::requested_cursor;

use super::harness::measured;
use super::tokens::SECRET;

const MIB: usize = 1 << 20;

/// Runs one hostile parse: at most `max_alloc` bytes held at once and 5 s.
fn hostile<T>(what: &str, max_alloc: usize, f: impl FnOnce() -> T) -> T {
    let (out, peak, elapsed) = measured(f);
    println!("hostile {what}: peak {peak} bytes, {elapsed:.2?}");
    assert!(elapsed < Duration::from_secs(5), "{what}: took {elapsed:?}");
    assert!(
        peak <= max_alloc,
        "{what}: allocated {peak} bytes (limit {max_alloc})"
    );
    out
}

#[test]
fn hostile_megabyte_inputs_fail_fast_and_small() {
    let long = "a".repeat(MIB);
    assert!(hostile("Channel::parse 1 MiB name", 4096, || Channel::parse(&long)).is_err());

    let many: String = (0..)
        .map(|i| format!("c{i},"))
        .take_while({
            let mut len = 0;
            move |s: &String| {
                len += s.len();
                len <= MIB
            }
        })
        .collect();
    let err = hostile("Cursor::parse 1 MiB of entries", 64 * 1024, || {
        Cursor::parse(&many, 128)
    });
    assert_eq!(err.unwrap_err().code(), "too_many_channels");
    let epoch = format!("a@{}:1", "A".repeat(MIB));
    // (The error message copies the entry: see cursor_errors_echo_a_truncated_entry.)
    assert!(
        hostile("Cursor::parse 1 MiB epoch", 4 * MIB, || Cursor::parse(
            &epoch, 128
        ))
        .is_err()
    );
    let digits = format!("a@E:{}", "9".repeat(MIB));
    assert!(
        hostile("Cursor::parse 1 MiB offset", 4 * MIB, || Cursor::parse(
            &digits, 128
        ))
        .is_err()
    );

    let nested = "[".repeat(MIB);
    let err = hostile("ClientFrame::parse 1 MiB of '['", 64 * 1024, || {
        ClientFrame::parse(&nested).map(|_| ())
    });
    assert!(matches!(
        err.unwrap_err().1.code(),
        "bad_json" | "bad_frame"
    ));
    let unterminated = format!(
        r#"{{"op":"publish","channel":"a","data":"{}"#,
        "x".repeat(MIB)
    );
    let err = hostile("ClientFrame::parse 1 MiB open string", 64 * 1024, || {
        ClientFrame::parse(&unterminated).map(|_| ())
    });
    assert_eq!(err.unwrap_err().1.code(), "bad_json");

    // Deeply nested `data` is read without recursion (serde_json's RawValue skips values
    // iteratively), so it cannot overflow the stack; it is accepted as valid JSON.
    let depth = MIB / 2;
    let deep = format!(
        r#"{{"op":"publish","channel":"a","data":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    hostile(
        "ClientFrame::parse data nested 512 Ki deep",
        4 * MIB,
        || {
            ClientFrame::parse(&deep)
                .map(|_| ())
                .map_err(|(_, e)| e.label())
        },
    )
    .expect("deep data parses");

    let verifier = Verifier::hmac(SECRET).expect("verifier");
    let token = format!(
        "{}.{}.{}",
        "e".repeat(MIB / 3),
        "e".repeat(MIB / 3),
        "e".repeat(MIB / 3)
    );
    assert!(
        hostile("Verifier::verify 1 MiB token", 4096, || verifier
            .verify(&token))
        .is_err()
    );
    let tickets = Tickets::new(SECRET, 30).expect("tickets");
    assert!(
        hostile("Tickets::verify 1 MiB ticket", 4096, || tickets
            .verify(&token))
        .is_err()
    );

    let pattern = Pattern::new(format!("{}b", "*a".repeat(64)));
    let name = "a".repeat(64 * 1024);
    assert!(!hostile("Pattern::matches *a*a..b over 64 KiB", 0, || {
        pattern.matches(&name)
    }));

    let query = format!("channels={many}");
    let err = hostile("requested_cursor 1 MiB of channels", 4 * MIB, || {
        requested_cursor(&Query::parse(Some(&query)), None, 128).map(|_| ())
    });
    assert_eq!(err.unwrap_err().code(), "too_many_channels");
}

/// Error messages are sent back to the client: hostile input is echoed truncated
/// (`truncate_for_message`), as `Channel::parse` and the bad-channel cursor error do.
#[test]
fn cursor_errors_echo_a_truncated_entry() {
    let huge = "A".repeat(MIB);
    for text in [
        format!("a@{huge}:1"),
        format!("a@E:{}", "9".repeat(MIB)),
        format!("a@{huge}"),
        format!("{}@E:1", "a".repeat(MIB)),
    ] {
        let err = Cursor::parse(&text, 128).expect_err("malformed");
        let message = err.to_string();
        assert!(
            message.len() < 256,
            "{}: a {} byte error message for a {} byte cursor: {}…",
            err.code(),
            message.len(),
            text.len(),
            &message[..80]
        );
    }
}

/// A cursor offset is "plain decimal u64 ... at most 20 digits" (protocol.rs): a megabyte
/// of zeros is not an offset, and `007` must not be a second spelling of `7`.
#[test]
fn cursor_offsets_have_at_most_twenty_digits() {
    let zeros = format!("a@E:{}", "0".repeat(MIB));
    let result = hostile("Cursor::parse 1 MiB of zeros", 4096, || {
        Cursor::parse(&zeros, 128)
    });
    assert!(
        result.is_err(),
        "a 1 MiB offset of zeros parsed as {result:?}"
    );
    assert!(Cursor::parse("a@E:007", 128).is_err(), "leading zeros");
}

/// What one query string may cost: a URI is at most 64 KiB (the `http` crate's limit), and
/// parsing it should not hold more than a small multiple of that.
#[test]
fn query_parsing_allocates_a_small_multiple_of_its_input() {
    let uri_max = 64 * 1024;
    let pairs = "a&".repeat(uri_max / 2);
    let (_, peak, elapsed) = measured(|| Query::parse(Some(&pairs)));
    println!("hostile Query::parse 32 Ki pairs: peak {peak} bytes, {elapsed:.2?}");
    assert!(
        peak <= 8 * uri_max,
        "a 64 KiB query of 'a&a&..' holds {peak} bytes ({}x its size) while it is parsed, \
         and long polls keep it for their whole hold",
        peak / uri_max
    );
}
