//! Micro-benchmarks of the per-event work of tidings, with the std harness
//! (no extra dependency): codec through typetag, local dispatch, headers.
//!
//! Run: `cargo bench --bench micro`. Prints nanoseconds per operation, the
//! median of 7 rounds.

use std::hint::black_box;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tidings::{Bincode, Codec, Event, EventType, Json, Subscribers};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "micro.order")]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
}

/// Median nanoseconds per call of `f` over 7 rounds of `n` calls.
fn time(n: u32, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

fn main() {
    let order = Order {
        id: 42,
        customer: "Zoë Ramírez".into(),
        lines: vec![("tea".into(), 2), ("cake".into(), 1)],
        note: Some("ring twice".into()),
    };
    let event: Box<dyn Event> = Box::new(order.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    println!("{:<52} {:>10}", "operation", "ns/op");
    for (name, codec) in [
        ("bincode", &Bincode as &dyn Codec),
        ("json", &Json as &dyn Codec),
    ] {
        let body = codec.encode(&event).unwrap();
        let concrete = codec.encode(&order).unwrap();
        let rows = [
            (
                format!("{name}: encode Box<dyn Event> ({} B)", body.len()),
                time(100_000, || {
                    black_box(codec.encode(black_box(&event)).unwrap());
                }),
            ),
            (
                format!("{name}: decode Box<dyn Event>"),
                time(100_000, || {
                    black_box(codec.decode::<Box<dyn Event>>(black_box(&body)).unwrap());
                }),
            ),
            (
                format!("{name}: encode the concrete type ({} B)", concrete.len()),
                time(100_000, || {
                    black_box(codec.encode(black_box(&order)).unwrap());
                }),
            ),
            (
                format!("{name}: decode the concrete type"),
                time(100_000, || {
                    black_box(codec.decode::<Order>(black_box(&concrete)).unwrap());
                }),
            ),
        ];
        for (label, ns) in rows {
            println!("{label:<52} {ns:>10.0}");
        }
    }
    for handlers in [1usize, 10] {
        let subscribers = Subscribers::new();
        for _ in 0..handlers {
            subscribers
                .subscribe(|o: &Order| {
                    black_box(o.id);
                })
                .forget();
        }
        let ns = time(100_000, || {
            black_box(runtime.block_on(subscribers.notify(order.clone())));
        });
        println!(
            "{:<52} {ns:>10.0}",
            format!("notify to {handlers} typed subscriber(s)")
        );
    }
    let ns = time(1_000_000, || {
        black_box(Order::schema().fingerprint().to_string());
    });
    println!("{:<52} {ns:>10.0}", "fingerprint header text");
}
