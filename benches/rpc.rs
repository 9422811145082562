//! Request and reply over RabbitMQ: calls per second with 1 and with 16
//! calls in flight, and the round trip's p50 and p99, for tidings
//! (`Bus::call` / `Bus::serve`) and for raw lapin doing direct reply-to
//! with the same settings (caller: confirms, mandatory publishes, no-ack
//! consumer on `amq.rabbitmq.reply-to`; server: prefetch 256, a confirming
//! channel for replies, acks after replying), in the same run.
//!
//! ```text
//! cargo bench --bench rpc        # AMQP_URL, default amqp://127.0.0.1:5672/%2f
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, ConnectionProperties};
use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Event, Request};
use tokio::sync::oneshot;
use tokio_stream::StreamExt;

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "bench.rpc.ping")]
struct Ping(u64);

#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "bench.rpc.pong")]
struct Pong(u64);

impl Request for Ping {
    type Reply = Pong;
}

const CALLS: usize = 4_000;

struct Row {
    calls_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn row(mut latencies: Vec<Duration>, took: Duration) -> Row {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Row {
        calls_per_s: latencies.len() as f64 / took.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Runs `CALLS` calls with `in_flight` callers, each timing its calls.
async fn drive<F, Fut>(in_flight: usize, call: F) -> Row
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..in_flight {
        let call = call.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            for n in (caller..CALLS).step_by(in_flight) {
                let at = Instant::now();
                call(n as u64).await;
                latencies.push(at.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.unwrap());
    }
    row(latencies, started.elapsed())
}

async fn tidings_rows(url: &str, exchange: &str) -> Vec<Row> {
    let props = AmqpProps::from_url(url)
        .unwrap()
        .with_exchange(exchange, tidings::ExchangeKind::Topic);
    let server = Bus::with_props(props.clone())
        .publish_only()
        .connect()
        .await
        .unwrap();
    server
        .serve(|ping: Arc<Ping>| async move { Ok::<_, std::io::Error>(Pong(ping.0)) })
        .await
        .unwrap();
    let caller = Bus::with_props(props)
        .publish_only()
        .connect()
        .await
        .unwrap();
    caller.call(&Ping(0)).await.unwrap();
    let mut rows = Vec::new();
    for in_flight in [1, 16] {
        let caller = caller.clone();
        rows.push(
            drive(in_flight, move |n| {
                let caller = caller.clone();
                async move {
                    caller.call(&Ping(n)).await.unwrap();
                }
            })
            .await,
        );
    }
    caller.close().await.unwrap();
    server.close().await.unwrap();
    rows
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

async fn lapin_rows(url: &str, queue: &str) -> Vec<Row> {
    let uri = url.to_owned();
    // Server.
    let server = lapin::Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = server.create_channel().await.unwrap();
    channel
        .basic_qos(256, BasicQosOptions::default())
        .await
        .unwrap();
    let declare = QueueDeclareOptions {
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), declare, FieldTable::default())
        .await
        .unwrap();
    let replies = server.create_channel().await.unwrap();
    replies
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut requests = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = requests.next().await {
            let reply_to = delivery.properties.reply_to().clone().unwrap();
            let id = delivery.properties.correlation_id().clone().unwrap();
            let _ = replies
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &delivery.data,
                    BasicProperties::default().with_correlation_id(id),
                )
                .await;
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    });
    // Caller.
    let client = lapin::Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let calls = client.create_channel().await.unwrap();
    calls
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut consumer = calls
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let waiters: Waiters = Arc::default();
    let routing = waiters.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let id = delivery.properties.correlation_id().clone().unwrap();
            if let Some(waiter) = routing.lock().unwrap().remove(id.as_str()) {
                let _ = waiter.send(delivery.data);
            }
        }
    });
    let queue: ShortString = queue.into();
    let mut rows = Vec::new();
    for in_flight in [1, 16] {
        let (calls, waiters, queue) = (calls.clone(), waiters.clone(), queue.clone());
        rows.push(
            drive(in_flight, move |n| {
                let (calls, waiters, queue) = (calls.clone(), waiters.clone(), queue.clone());
                async move {
                    let (tx, rx) = oneshot::channel();
                    let id = n.to_string();
                    waiters.lock().unwrap().insert(id.clone(), tx);
                    let properties = BasicProperties::default()
                        .with_reply_to("amq.rabbitmq.reply-to".into())
                        .with_correlation_id(id.into())
                        .with_expiration("10000".into());
                    let options = BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    };
                    let _confirm = calls
                        .basic_publish("".into(), queue, options, &n.to_le_bytes(), properties)
                        .await
                        .unwrap();
                    rx.await.unwrap();
                }
            })
            .await,
        );
    }
    let _ = client.close(200, "done".into()).await;
    let _ = server.close(200, "done".into()).await;
    rows
}

#[tokio::main]
async fn main() {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".into());
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("tidings-test.bench-rpc-{}", &unique[..8]);
    let raw = lapin_rows(&url, &format!("{exchange}.raw")).await;
    let ours = tidings_rows(&url, &exchange).await;
    // What the tidings buses declared: the exchange, its dead letters and
    // its schema stream.
    if let Ok(conn) = lapin::Connection::connect(&url, ConnectionProperties::default()).await
        && let Ok(channel) = conn.create_channel().await
    {
        let dead_letters = format!("{exchange}.dead-letter");
        for queue in [dead_letters.clone(), tidings::schema_stream(&exchange)] {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
        for name in [dead_letters.as_str(), exchange.as_str()] {
            let _ = channel
                .exchange_delete(name.into(), Default::default())
                .await;
        }
        let _ = conn.close(200, "done".into()).await;
    }
    println!("{CALLS} calls per row, one broker, same run");
    println!(
        "{:<10} {:>9} {:>12} {:>12} {:>10} {:>10} {:>8} {:>8}",
        "in flight", "", "calls/s", "raw calls/s", "p50", "p99", "ratio", "p99 x"
    );
    for ((in_flight, ours), raw) in [1, 16].iter().zip(&ours).zip(&raw) {
        println!(
            "{:<10} {:>9} {:>12.0} {:>12.0} {:>10.2?} {:>10.2?} {:>7.2}x {:>7.2}x",
            in_flight,
            "tidings",
            ours.calls_per_s,
            raw.calls_per_s,
            ours.p50,
            ours.p99,
            ours.calls_per_s / raw.calls_per_s,
            ours.p99.as_secs_f64() / raw.p99.as_secs_f64(),
        );
        println!(
            "{:<10} {:>9} {:>12} {:>12} {:>10.2?} {:>10.2?}",
            "", "raw lapin", "", "", raw.p50, raw.p99
        );
    }
}
