//! The fuzz harness: bounded, counted property runs; per-thread heap accounting; and the
//! input strategies the properties share.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::Value;

/// Cases per property: `CASCADE_FUZZ_CASES`, default 2000.
pub fn cases() -> u32 {
    std::env::var("CASCADE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Runs `test` on `cases()` values of `strategy`, printing the count; panics on failure
/// with the shrunk input.
pub fn fuzz<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let config = RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        ..RunnerConfig::default()
    };
    let ran = Cell::new(0u64);
    let started = Instant::now();
    let result = TestRunner::new(config).run(&strategy, |value| {
        ran.set(ran.get() + 1);
        test(value)
    });
    println!(
        "fuzz {name}: {} cases in {:.2?}",
        ran.get(),
        started.elapsed()
    );
    if let Err(err) = result {
        panic!("{name}: {err}");
    }
}

/// Counts live heap bytes per thread, so a test can bound what one parse allocates.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: allocations during thread teardown must not panic.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add_signed(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: delegates to the system allocator; only bookkeeping is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result, the peak extra heap it held, and how long it took.
pub fn measured<T>(f: impl FnOnce() -> T) -> (T, usize, Duration) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let started = Instant::now();
    let out = f();
    let elapsed = started.elapsed();
    let peak = PEAK.with(Cell::get).saturating_sub(base);
    (out, peak, elapsed)
}

// Strategies.

pub const CHANNEL_ALPHABET: &str = "[A-Za-z0-9_.:/-]";

pub fn channel_name() -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{CHANNEL_ALPHABET}{{1,128}}")).expect("regex")
}

pub fn epoch() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{1,16}"
}

/// Any text: arbitrary Unicode, and text biased toward each parser's own punctuation.
pub fn hostile_text() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9@:,./_ -]{0,64}",
        "[\\x00-\\x7f]{0,64}",
        "[a-c@:,{}\\[\\]\"\\\\%&=+0-9]{0,64}",
    ]
    .boxed()
}

pub fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("op".to_owned()),
        Just("channels".to_owned()),
        Just("cursor".to_owned()),
        Just("channel".to_owned()),
        Just("data".to_owned()),
        Just("id".to_owned()),
        "[a-z]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("subscribe".to_owned()),
            Just("unsubscribe".to_owned()),
            Just("publish".to_owned()),
            any::<String>(),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

pub fn error_code_in(code: &str, allowed: &[&str]) -> Result<(), TestCaseError> {
    prop_assert!(allowed.contains(&code), "unexpected error code {code}");
    Ok(())
}
