//! The process shared by the rolling-upgrade examples (`upgrade_v1`,
//! `upgrade_v2`, `upgrade_retyped`): each is one build of a service, with
//! its own shapes of the same events, run as a consumer or a publisher
//! against the exchange in `AMQP_URL`.
//!
//! ```text
//! upgrade_v1 consume broadcast|group   prints `ready`, then one line per event,
//!                                      and its counts once stdin closes
//! upgrade_v1 publish FIRST COUNT       publishes COUNT events of each type
//! ```

use std::future::Future;
use std::pin::Pin;

use tidings::{Bus, Listen, RejectReason, Subscribers, Subscription};
use tokio::io::AsyncReadExt;

/// Publishes one event of each type with an id.
type Publish = for<'a> fn(&'a Bus, u64) -> Pin<Box<dyn Future<Output = tidings::Result<()>> + 'a>>;

/// What differs between builds: the events they subscribe to and publish.
pub(crate) struct Build {
    /// Subscribes the handlers, which print what they receive.
    pub(crate) subscribe: fn(&Subscribers) -> Vec<Subscription>,
    /// Publishes one event of each type with this id.
    pub(crate) publish: Publish,
}

pub(crate) fn main(build: Build) -> tidings::Result<()> {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(run(build))
}

async fn run(build: Build) -> tidings::Result<()> {
    let url = std::env::var("AMQP_URL").expect("AMQP_URL names the broker and exchange");
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["consume", how] => {
            let listen = match how {
                "group" => Listen::group("upgrade"),
                _ => Listen::broadcast(),
            };
            let subscribers = Subscribers::new();
            let _subscriptions = (build.subscribe)(&subscribers);
            let bus = Bus::builder(&url)?
                .subscribers(subscribers)
                .listen(listen)
                .connect()
                .await?;
            println!("ready");
            // Until the test closes stdin.
            let mut rest = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut rest).await;
            let stats = bus.stats();
            println!(
                "stats resolved={} upcasts={} incompatible={} newer={} dead_lettered={} handled={}",
                stats.schemas_resolved,
                stats.upcasts,
                stats.rejected(RejectReason::IncompatibleSchema),
                stats.rejected(RejectReason::NewerVersion),
                stats.dead_lettered,
                stats.handled,
            );
            bus.close().await
        }
        ["publish", first, count] => {
            let first: u64 = first.parse().expect("FIRST is a number");
            let count: u64 = count.parse().expect("COUNT is a number");
            let bus = Bus::builder(&url)?.publish_only().connect().await?;
            for id in first..first + count {
                (build.publish)(&bus, id).await?;
            }
            bus.close().await?;
            println!("published {count}");
            Ok(())
        }
        _ => {
            eprintln!("usage: consume broadcast|group, or publish FIRST COUNT");
            std::process::exit(2);
        }
    }
}
