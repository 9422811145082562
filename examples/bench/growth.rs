//! `--growth`: how cost grows with each factor, one at a time, against raw
//! lapin where raw lapin can do the same work: body size, event types
//! subscribed to in the consuming bus, subscribers per type, listeners per
//! process, and handler concurrency with handlers that await 1 ms. Every
//! row is fanout 1 and confirmed (tidings `publish_confirmed` and raw lapin
//! tuned, `WINDOW` in flight) and checks that every event arrived exactly
//! once, as the other rows do (`crate::row`).
//!
//! Event types: `#[derive(Event)]` registers each type in the binary's
//! registry (`inventory`) whether or not a bus uses it, so every row runs
//! with the same 100 and more registered; what a row varies is how many of
//! them the consuming bus subscribes to (`Payload`, which is published,
//! and `types - 1` of the generated `T001`..`T099`, never published). 1, 10
//! and 100, not 1,000: 999 generated types took rustc more than 10 CPU
//! minutes and 2 GB to build this example in release, 99 take seconds.

use serde::{Deserialize, Serialize};
use tidings::{Event, Subscribers};

use crate::{Error, Figures, Kind, Load, Scenario, Shape, Urls, row, thousands};

/// Declares the event types `T001`.. (a `seq` each) and `OTHER_TYPES`, one
/// function per type that subscribes a handler doing nothing to it.
macro_rules! event_types {
    ($($name:ident)*) => {
        $(
            #[derive(Event, Serialize, Deserialize, Debug)]
            struct $name {
                seq: u64,
            }
        )*

        /// Subscribes a no-op handler to one generated type each.
        const OTHER_TYPES: &[fn(&Subscribers)] = &[
            $(|subscribers: &Subscribers| subscribers.subscribe(|_: &$name| {}).forget()),*
        ];
    };
}

event_types! {
    T001 T002 T003 T004 T005 T006 T007 T008 T009 T010 T011
    T012 T013 T014 T015 T016 T017 T018 T019 T020 T021 T022
    T023 T024 T025 T026 T027 T028 T029 T030 T031 T032 T033
    T034 T035 T036 T037 T038 T039 T040 T041 T042 T043 T044
    T045 T046 T047 T048 T049 T050 T051 T052 T053 T054 T055
    T056 T057 T058 T059 T060 T061 T062 T063 T064 T065 T066
    T067 T068 T069 T070 T071 T072 T073 T074 T075 T076 T077
    T078 T079 T080 T081 T082 T083 T084 T085 T086 T087 T088
    T089 T090 T091 T092 T093 T094 T095 T096 T097 T098 T099
}

/// Subscribes no-op handlers to `n` of the generated event types (at most
/// all 99).
pub(crate) fn subscribe_other_types(subscribers: &Subscribers, n: u32) {
    for subscribe in OTHER_TYPES.iter().take(n as usize) {
        subscribe(subscribers);
    }
}

/// How many events a row of this body size sends: `events` up to 10 KB
/// (a rate over fewer events is mostly start-up and the last batch), and
/// as many bytes as 10 KB rows move above it, but at least 200 events (or
/// `events`, when fewer were asked for).
fn events_for(events: u64, size: usize) -> u64 {
    if size <= 10_000 {
        return events;
    }
    (events * 10_000 / size as u64).max(events.min(200))
}

/// One line of the table: a factor's value, tidings' figures, raw lapin's
/// (its own row, or the 100 B baseline where raw lapin has no such thing).
struct Line<'a> {
    factor: &'a str,
    value: String,
    events: u64,
    ours: Figures,
    raw: Figures,
    /// Whether `raw` is the 100 B baseline, not a row of this work.
    raw_is_baseline: bool,
}

/// Prints the table of how cost grows.
pub(crate) async fn run(urls: &Urls, events: u64) -> Result<(), Error> {
    println!(
        "tidings bench --growth: {events} events per row (fewer for bodies over 10 KB), fanout \
         1, confirmed, prefetch {}, window {}; raw lapin tuned beside tidings",
        crate::PREFETCH,
        crate::WINDOW
    );
    println!(
        "events/s: publish start -> last handler call; CPU: the consumer process's µs per \
         event published (its threads' schedstat);\n* raw lapin has no event types or \
         subscribers: those rows compare with raw lapin's 100 B row"
    );
    println!(
        "{:<22} {:>7} {:>7} {:>11} {:>9} {:>11} {:>9} {:>8} {:>8}",
        "factor",
        "value",
        "events",
        "tidings/s",
        "µs/event",
        "raw/s",
        "µs/event",
        "vs raw",
        "CPU x"
    );
    let print = |line: &Line<'_>| {
        let micros = |f: &Figures| f.consumer_ns as f64 / 1e3 / line.events as f64;
        let mark = if line.raw_is_baseline { "*" } else { " " };
        println!(
            "{:<22} {:>7} {:>7} {:>11} {:>9.1} {:>10}{mark} {:>9.1} {:>7.2}x {:>7.2}x",
            line.factor,
            line.value,
            line.events,
            thousands(line.ours.events_per_second),
            micros(&line.ours),
            thousands(line.raw.events_per_second),
            micros(&line.raw),
            line.ours.events_per_second / line.raw.events_per_second,
            micros(&line.ours) / micros(&line.raw).max(f64::MIN_POSITIVE),
        );
    };
    let plain = |size: usize, load: Load| Scenario {
        load,
        ..Scenario::new(size, Shape::Fanout(1), true)
    };
    let both = |scenario: Scenario, n: u64| async move {
        let raw = row(urls, n, scenario, Kind::Tuned).await?;
        let ours = row(urls, n, scenario, Kind::Tidings).await?;
        Ok::<_, Error>((ours, raw))
    };

    let mut baseline = None;
    for size in [100, 1_000, 10_000, 1_000_000] {
        let n = events_for(events, size);
        let (ours, raw) = both(plain(size, Load::PLAIN), n).await?;
        if size == 100 {
            baseline = Some(raw);
        }
        let value = plain(size, Load::PLAIN).label();
        let value = value.split(',').next().unwrap_or_default().to_owned();
        print(&Line {
            factor: "body size",
            value,
            events: n,
            ours,
            raw,
            raw_is_baseline: false,
        });
    }
    let baseline = baseline.ok_or("no 100 B row")?;
    for types in [1, 10, 100] {
        let load = Load {
            types,
            ..Load::PLAIN
        };
        let ours = row(urls, events, plain(100, load), Kind::Tidings).await?;
        print(&Line {
            factor: "types subscribed",
            value: thousands(f64::from(types)),
            events,
            ours,
            raw: baseline,
            raw_is_baseline: true,
        });
    }
    for subscribers in [1, 10, 100] {
        let load = Load {
            subscribers,
            ..Load::PLAIN
        };
        let ours = row(urls, events, plain(100, load), Kind::Tidings).await?;
        print(&Line {
            factor: "subscribers per type",
            value: subscribers.to_string(),
            events,
            ours,
            raw: baseline,
            raw_is_baseline: true,
        });
    }
    for listeners in [1, 4, 16] {
        let load = Load {
            listeners,
            ..Load::PLAIN
        };
        let (ours, raw) = both(plain(100, load), events).await?;
        print(&Line {
            factor: "listeners per process",
            value: listeners.to_string(),
            events,
            ours,
            raw,
            raw_is_baseline: false,
        });
    }
    for concurrency in [1, 4, 16] {
        let load = Load {
            concurrency,
            sleep_us: 1_000,
            ..Load::PLAIN
        };
        let (ours, raw) = both(plain(100, load), events).await?;
        print(&Line {
            factor: "concurrency, 1 ms",
            value: concurrency.to_string(),
            events,
            ours,
            raw,
            raw_is_baseline: false,
        });
    }
    Ok(())
}
