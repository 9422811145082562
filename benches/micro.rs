//! Micro-benchmarks of the per-event work of tidings, with the std harness
//! (no extra dependency): codec through typetag, the listener's decode path
//! (schemas equal, and an event of another schema read by name), local
//! dispatch, headers, compression of a 10 KB JSON-ish body (each algorithm
//! this build has: `cargo bench --bench micro --features zstd,lz4`).
//!
//! Run: `cargo bench --bench micro`. Prints nanoseconds per operation, the
//! median of 7 rounds.

use std::hint::black_box;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tidings::__private::{ListenerDecoder, SigningProbe, decompress_probe};
use tidings::{
    Bincode, Codec, Compression, Event, EventType, Fingerprint, Json, Schema, Signing, Subscribers,
};

#[derive(Event, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[event(name = "micro.order")]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
}

/// Another build's `Order`: a field renamed with an alias, one added.
#[derive(Serialize, Deserialize)]
struct TheirOrder {
    id: u64,
    customer: String,
    lines: Vec<(String, u32)>,
    note: Option<String>,
    coupon: Option<String>,
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
    decode_path(&order);
    signing(&(&Bincode as &dyn Codec).encode(&event).unwrap());
    compression();
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

/// The listener's decode path: schemas equal (the fast path) against the
/// bare codec, and an event of another build's schema read by name.
fn decode_path(order: &Order) {
    let decoder = ListenerDecoder::default();
    let theirs = Schema::trace::<TheirOrder>("micro.order", 1, &[], Fingerprint::from_u64(0));
    decoder.store(&theirs);
    let ours = Order::schema().fingerprint().to_string();
    let their_fingerprint = theirs.fingerprint().to_string();
    let their_order = std::collections::BTreeMap::from([(
        "micro.order",
        TheirOrder {
            id: order.id,
            customer: order.customer.clone(),
            lines: order.lines.clone(),
            note: order.note.clone(),
            coupon: Some("XMAS".into()),
        },
    )]);
    for (name, codec, content_type) in [
        (
            "bincode",
            &Bincode as &dyn Codec,
            tidings::BINCODE_CONTENT_TYPE,
        ),
        ("json", &Json as &dyn Codec, tidings::JSON_CONTENT_TYPE),
    ] {
        let event: Box<dyn Event> = Box::new(order.clone());
        let body = codec.encode(&event).unwrap();
        let their_body = codec.encode(&their_order).unwrap();
        let decode = |body: &Vec<u8>, fingerprint: &str| {
            decoder
                .decode(
                    body.clone(),
                    content_type,
                    "micro.order",
                    fingerprint.to_owned(),
                )
                .unwrap()
        };
        assert_eq!(decode(&their_body, &their_fingerprint).tag(), "micro.order");
        let bare = time(100_000, || {
            black_box(codec.decode::<Box<dyn Event>>(black_box(&body)).unwrap());
        });
        let fast = time(100_000, || {
            black_box(decode(black_box(&body), &ours));
        });
        let resolved = time(100_000, || {
            black_box(decode(black_box(&their_body), &their_fingerprint));
        });
        // Building the message and refusing it at the tag (with its error
        // text): an upper bound of what the rows above spend outside the
        // decode path itself.
        let harness = time(100_000, || {
            let refused = decoder.decode(body.clone(), content_type, "micro.unknown", ours.clone());
            black_box(refused.unwrap_err());
        });
        println!(
            "{:<52} {bare:>10.0}",
            format!("{name}: bare codec decode (reference)")
        );
        println!(
            "{:<52} {harness:>10.0}",
            format!("{name}: message built, refused at the tag")
        );
        println!(
            "{:<52} {fast:>10.0}  {:.2}x the bare decode",
            format!("{name}: listener decode, same schema"),
            fast / bare
        );
        println!(
            "{:<52} {resolved:>10.0}  {:.2}x the same-schema decode",
            format!("{name}: listener decode, another schema by name"),
            resolved / fast
        );
    }
}

/// What signing costs per event (`Signing`, HMAC-SHA256): the publisher's
/// signature, the receiver's check; for this event's body and a 16 KiB one.
fn signing(body: &[u8]) {
    let keys = Signing::new()
        .with_signing_key("k1", [7u8; 32])
        .unwrap()
        .require_signed(true)
        .with_max_age(std::time::Duration::from_secs(60));
    for body in [body.to_vec(), vec![0x5a; 16 * 1024]] {
        let size = body.len();
        let mut probe = SigningProbe::new(keys.clone(), body);
        let sign = time(100_000, || {
            black_box(probe.sign());
        });
        probe.sign();
        probe.verify().unwrap();
        let verify = time(100_000, || {
            probe.verify().unwrap();
        });
        println!(
            "{:<52} {sign:>10.0}",
            format!("signing: sign an event ({size} B body)")
        );
        println!(
            "{:<52} {verify:>10.0}",
            format!("signing: verify an event ({size} B body)")
        );
    }
}

/// What compressing and decompressing a 10 KB JSON-ish event body costs
/// (order lines whose numbers and words vary), and what it saves.
fn compression() {
    let lines: Vec<serde_json::Value> = (0u64..160)
        .map(|i| {
            let spread = i.wrapping_mul(2_654_435_761) % 100_003;
            let item = ["tea", "cake", "scone", "honey"][(spread % 4) as usize];
            let note = ["green", "loose leaf", "gift box", "express"][(i % 4) as usize];
            serde_json::json!({
                "sku": format!("{item}-{}", spread % 9_973),
                "qty": spread % 7 + 1,
                "cents": spread,
                "note": note,
            })
        })
        .collect();
    let body = serde_json::to_vec(&lines).unwrap();
    for algorithm in [Compression::Gzip, Compression::Zstd, Compression::Lz4] {
        if !algorithm.is_built() {
            continue;
        }
        let packed = algorithm.compress(&body).unwrap();
        let encoding = algorithm.content_encoding();
        let compress = time(500, || {
            black_box(algorithm.compress(black_box(&body)).unwrap());
        });
        let decompress = time(500, || {
            black_box(decompress_probe(black_box(&packed), encoding, 1 << 20).unwrap());
        });
        println!(
            "{:<52} {compress:>10.0}",
            format!(
                "{algorithm}: compress {} B to {} B",
                body.len(),
                packed.len()
            )
        );
        println!(
            "{:<52} {decompress:>10.0}",
            format!("{algorithm}: decompress, bounded")
        );
    }
}
