//! The zamqp walkthrough, ported: props, a connection, a consumer thread
//! with a callback, and a producer sending values.
//!
//! Run: `cargo run --example walkthrough` (reads `AMQP_URL`, default
//! `amqp://127.0.0.1:5672/%2f`).

#[path = "logging/mod.rs"]
mod logging;
#[path = "topology/mod.rs"]
mod topology;

use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, ConsumerThread, ExchangeKind, Queue, blocking};

#[derive(Serialize, Deserialize, Debug)]
struct Greeting {
    from: String,
    text: String,
    count: u32,
}

/// Runs the walkthrough; a failure prints as `error: ...` (what went wrong,
/// not a Debug dump) and exits 1.
fn main() -> std::process::ExitCode {
    logging::init();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // zamqp: AMQPProps(host, user, password, ssl, exchange, type, realm)
    let props = AmqpProps::from_url(
        &std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://127.0.0.1:5672/%2f".to_owned()),
    )?
    .with_exchange("tidings.walkthrough", ExchangeKind::Fanout)
    .with_connection_name("walkthrough");
    println!("props: {}", props.redacted_url());
    let walked = walk(&props);
    // The exchange goes too, also when the walk failed.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(topology::delete(&props, &[]))?;
    walked
}

fn walk(props: &AmqpProps) -> Result<(), Box<dyn std::error::Error>> {
    // zamqp: AMQPThread(AMQPConsumer(queue, props, callback)).start()
    let (done_tx, done_rx) = mpsc::channel();
    let consumer = ConsumerThread::spawn(props, Queue::exclusive(), move |delivery| {
        let greeting: Greeting = delivery.decode()?;
        println!(
            "received #{} from {}: {:?} ({} bytes, {})",
            greeting.count,
            greeting.from,
            greeting.text,
            delivery.body().len(),
            delivery.content_type().unwrap_or("no content type"),
        );
        done_tx.send(greeting.count)?;
        Ok(())
    })?;
    println!("consumer thread listening on queue {}", consumer.queue());

    // zamqp: AMQPProducer(queue, props)(message)
    let producer = blocking::Producer::connect(props)?;
    for count in 1..=3 {
        let greeting = Greeting {
            from: "walkthrough".to_owned(),
            text: format!("hello number {count}"),
            count,
        };
        producer.publish(&greeting)?;
        println!("sent #{count} (confirmed by the broker)");
    }

    for _ in 1..=3 {
        done_rx.recv_timeout(Duration::from_secs(10))?;
    }
    producer.close()?;
    consumer.stop()?;
    println!("done: 3 sent, 3 received");
    Ok(())
}
