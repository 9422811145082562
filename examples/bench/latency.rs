//! Latency from publish to handler at fixed offered rates, with the
//! publish timestamp carried in the event; in one process (the consumer
//! and the publisher on their own connections).

use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicPublishOptions};
use tidings::{AmqpProps, Bus, ExchangeKind, Subscribers};
use tokio_stream::StreamExt;

use crate::{
    Error, PREFETCH, Payload, exchange_name, now_nanos, raw_consumer, raw_exchange, remove_topology,
};

/// The offered rates of the latency rows, events per second.
pub(crate) const RATES: [u64; 2] = [2_000, 10_000];

/// Publishes `events` at `rate` a second, calling `send(seq, stamp)`.
/// tokio's timer has a resolution of 1 ms: above 1,000/s the ticks come
/// in bursts (`Burst` catches up on the ones missed), at the offered rate
/// on average.
async fn paced<F, Fut>(events: u64, rate: u64, mut send: F) -> Result<(), Error>
where
    F: FnMut(u64, u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..events {
        ticker.tick().await;
        send(seq, now_nanos()).await?;
    }
    Ok(())
}

pub(crate) async fn raw_latency(url: &str, events: u64, rate: u64) -> Result<Vec<u64>, Error> {
    let exchange = exchange_name("latency");
    let options = lapin::ConnectionProperties::default();
    let consumer_conn = lapin::Connection::connect(url, options.clone()).await?;
    let publisher_conn = lapin::Connection::connect(url, options).await?;
    let channel = consumer_conn.create_channel().await?;
    raw_exchange(&channel, &exchange).await?;
    let mut consumer = raw_consumer(
        &channel,
        &exchange,
        &format!("{exchange}.q"),
        false,
        false,
        "latency",
    )
    .await?;
    let receiving = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(usize::try_from(events).unwrap_or(0));
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            let stamp = u64::from_le_bytes(delivery.data[..8].try_into().unwrap_or_default());
            samples.push(now_nanos().saturating_sub(stamp));
            delivery.ack(BasicAckOptions::default()).await?;
            if samples.len() as u64 == events {
                break;
            }
        }
        Ok::<_, lapin::Error>(samples)
    });
    let publisher = publisher_conn.create_channel().await?;
    let exchange_ref = exchange.as_str();
    paced(events, rate, |_, stamp| {
        let publisher = &publisher;
        async move {
            let mut body = stamp.to_le_bytes().to_vec();
            body.resize(100, 7);
            publisher
                .basic_publish(
                    exchange_ref.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await?;
            Ok(())
        }
    })
    .await?;
    let samples = tokio::time::timeout(Duration::from_secs(60), receiving).await???;
    if samples.len() as u64 != events {
        return Err(format!("raw lapin lost events: {} of {events}", samples.len()).into());
    }
    consumer_conn.close(200, "bench done".into()).await?;
    publisher_conn.close(200, "bench done".into()).await?;
    Ok(samples)
}

pub(crate) async fn bus_latency(url: &str, events: u64, rate: u64) -> Result<Vec<u64>, Error> {
    let props = AmqpProps::from_url(url)?
        .with_exchange(exchange_name("tidings-latency"), ExchangeKind::Fanout)
        .with_prefetch(PREFETCH);
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(tokio::sync::Notify::new());
    let subscribers = Subscribers::new();
    let (s, d) = (samples.clone(), done.clone());
    subscribers
        .subscribe(move |p: &Payload| {
            let mut samples = s.lock().unwrap_or_else(|e| e.into_inner());
            samples.push(now_nanos().saturating_sub(p.seq));
            if samples.len() as u64 == events {
                d.notify_one();
            }
        })
        .forget();
    let listener = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .connect()
        .await?;
    let publisher = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await?;
    let data = "x".repeat(40);
    // `seq` carries the publish timestamp here.
    paced(events, rate, |_, stamp| {
        let (publisher, data) = (&publisher, data.clone());
        async move { Ok(publisher.publish(&Payload { seq: stamp, data }).await?) }
    })
    .await?;
    tokio::time::timeout(Duration::from_secs(60), done.notified()).await?;
    publisher.close().await?;
    listener.close().await?;
    remove_topology(&props, &[]).await?;
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(samples)
}
