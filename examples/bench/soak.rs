//! `--soak N`: one tidings consumer process with a slow handler (spinning
//! 50 µs, or `--soak-spin-us`) over N events, published as fast as the bus
//! allows; the consumer prints its resident set every `sample_interval(N)`
//! events (a tenth of the run, at most 1,000,000), so flat memory can be
//! seen.

use std::time::Duration;

use tidings::{AmqpProps, Bus, ExchangeKind};

use crate::consumer::ConsumerProcess;
use crate::{Error, PREFETCH, exchange_name, now_nanos, procfs, remove_topology, wait_for_all};

/// Time each soak handler call spins by default.
pub(crate) const SOAK_HANDLER: Duration = Duration::from_micros(50);

/// Events between two RSS samples: a tenth of the soak, at most 1,000,000
/// (so 100,000 for a million, 1,000,000 for ten million).
pub(crate) fn sample_interval(events: u64) -> u64 {
    (events / 10).clamp(1, 1_000_000)
}

/// Runs the soak: `events` events, the handler spinning `spin` on each.
pub(crate) async fn run(url: &str, events: u64, spin: Duration) -> Result<(), Error> {
    if events == 0 {
        return Err("--soak must be at least 1".into());
    }
    let exchange = exchange_name("soak");
    let props = AmqpProps::from_url(url)?
        .with_exchange(exchange.clone(), ExchangeKind::Fanout)
        .with_prefetch(PREFETCH);
    // What the soak declared goes, also when it failed.
    let result = soak_on(url, events, spin, &exchange, &props).await;
    let cleaned = remove_topology(&props, &[]).await;
    result?;
    cleaned
}

/// The soak on the exchange of `props`.
async fn soak_on(
    url: &str,
    events: u64,
    spin: Duration,
    exchange: &str,
    props: &AmqpProps,
) -> Result<(), Error> {
    println!(
        "tidings soak: {events} events of 100 B, fire-and-forget, prefetch {PREFETCH}, a \
         handler spinning {spin:?} in a consumer process, broker {}",
        props.redacted_url()
    );
    let mut consumer = ConsumerProcess::start(
        url,
        &[
            "soak",
            exchange,
            "bench",
            "broadcast",
            &format!("soak={events}"),
            &format!("spin_us={}", spin.as_micros()),
        ],
    )
    .await?;
    let ready = consumer.report().await?;
    println!(
        "{:>12} events handled   RSS {:>7.1} MB   peak {:>7.1} MB",
        0,
        ready.rss_kb as f64 / 1024.0,
        ready.hwm_kb as f64 / 1024.0
    );
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await?;
    let started = now_nanos();
    let publishing = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let data = crate::payload_data(100);
            crate::publish::bus(&publisher, events, &data, false).await
        })
    };
    let reports = wait_for_all(std::slice::from_mut(&mut consumer), events).await?;
    let published = publishing.await??;
    let report = reports[0];
    consumer.finish().await?;
    publisher.close().await?;
    let stats = publisher.stats();
    let expected_sum = events * (events - 1) / 2;
    if report.count != events || report.seq_sum != expected_sum || stats.confirmed != events {
        return Err(format!(
            "soak: handled {} of {events} events (sequence sum {}, expected {expected_sum}), \
             confirmed {}",
            report.count, report.seq_sum, stats.confirmed
        )
        .into());
    }
    let seconds = |end: u64| end.saturating_sub(started).max(1) as f64 / 1e9;
    println!(
        "done: {events} events handled and confirmed; {:.0} events/s end to end, {:.0} \
         published/s; consumer RSS {:.1} MB, peak {:.1} MB; consumer CPU {:.2} s per 100k events",
        events as f64 / seconds(report.last_ns),
        events as f64 / seconds(published),
        report.rss_kb as f64 / 1024.0,
        report.hwm_kb as f64 / 1024.0,
        report.ticks as f64 / procfs::ticks_per_second() / events as f64 * 100_000.0
    );
    Ok(())
}
