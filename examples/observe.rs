//! A service's observability: logs through `tracing`, Prometheus metrics
//! and health probes over HTTP.
//!
//! ```text
//! cargo run --features metrics --example observe            # serves until Ctrl-C
//! curl localhost:9464/metrics   # Prometheus text: tidings_published_total{tag=...}
//! curl localhost:9464/readyz    # 200 when connected and consuming, else 503; JSON health
//! curl localhost:9464/livez     # 200 unless the bus closed or a listener died
//! cargo run --features metrics --example observe -- --once  # prints both once and exits
//! ```
//!
//! It publishes an event every 100 ms to the exchange `tidings.observe` of
//! `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`) and handles
//! it, so the counters move; it deletes the exchange when it ends. The HTTP
//! server is a few lines of tokio: a real service would use its web
//! framework's routes.

#[path = "logging/mod.rs"]
mod logging;
#[path = "topology/mod.rs"]
mod topology;

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tidings::{AmqpProps, Bus, Event, ExchangeKind, Subscribers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::info;

/// Something happening, ten times a second.
#[derive(Event, Serialize, Deserialize, Debug, Clone)]
#[event(name = "observe.tick")]
struct Tick {
    n: u64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Logs: RUST_LOG, else info, to stderr; lapin's frame logs capped.
    logging::init();
    let once = std::env::args().any(|a| a == "--once");

    // Metrics: a Prometheus recorder for the `metrics` facade.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let props = AmqpProps::from_env()?.with_exchange("tidings.observe", ExchangeKind::Fanout);
    let subscribers = Subscribers::new();
    let _handled = subscribers.subscribe(|tick: &Tick| info!(n = tick.n, "tick"));
    let bus = Bus::with_props(props.clone())
        .subscribers(subscribers)
        .connect()
        .await?;
    let server = TcpListener::bind(if once {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:9464"
    })
    .await?;
    let address = server.local_addr()?;
    info!(%address, "serving /metrics, /readyz and /livez");
    tokio::spawn(serve(server, bus.clone(), prometheus));

    let publisher = bus.clone();
    let ticking = tokio::spawn(async move {
        for n in 0.. {
            if publisher.publish(&Tick { n }).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    if once {
        // Until a few ticks were handled, then what a scraper would see.
        while bus.stats().handled < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for path in ["/metrics", "/readyz"] {
            println!("GET {path}\n{}", get(address, path).await?);
        }
    } else {
        tokio::signal::ctrl_c().await?;
    }
    ticking.abort();
    bus.close().await?;
    topology::delete(&props, &[]).await?;
    Ok(())
}

/// Answers `GET /metrics`, `/readyz` and `/livez`, one request per
/// connection.
async fn serve(server: TcpListener, bus: Bus, prometheus: PrometheusHandle) {
    while let Ok((mut stream, _)) = server.accept().await {
        let (bus, prometheus) = (bus.clone(), prometheus.clone());
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let Ok(n) = stream.read(&mut request).await else {
                return;
            };
            let request = String::from_utf8_lossy(&request[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let health = bus.health();
            let (status, body) = match path {
                "/metrics" => (200, prometheus.render()),
                "/readyz" | "/livez" => {
                    let ok = if path == "/readyz" {
                        health.is_ready()
                    } else {
                        health.is_live()
                    };
                    let json = serde_json::to_string_pretty(&health).unwrap_or_default();
                    (if ok { 200 } else { 503 }, json)
                }
                _ => (404, "not found".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                if status == 200 { "OK" } else { "Unavailable" },
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// A GET of our own server, for `--once`.
async fn get(address: std::net::SocketAddr, path: &str) -> Result<String, Error> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}
