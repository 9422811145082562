//! `--cluster`: the group rows on a local 3-node cluster, classic against
//! quorum queues, the publisher and each consumer connected to another
//! node. The cluster (`scripts/rabbitmq-cluster`) is started under
//! `target/` and stopped at the end, also when a row fails.

use std::path::PathBuf;
use std::process::Command;

use tidings::QueueType;

use crate::{Error, Scenario, Shape, Urls};

/// The cluster's directory; stops the cluster when dropped.
struct Running(PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.0).status();
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-cluster")
}

fn run_script(args: &[&str]) -> Result<String, Error> {
    let out = Command::new(script()).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "scripts/rabbitmq-cluster {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub(crate) async fn run(events: u64) -> Result<(), Error> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("bench-cluster-{}", std::process::id()));
    let dir_text = dir.to_string_lossy().into_owned();
    eprintln!("starting a local 3-node cluster in {dir_text} (about 20 s)");
    let url = run_script(&["start", &dir_text])?;
    let running = Running(dir);
    let urls = Urls(
        run_script(&["ports", &dir_text])?
            .lines()
            .map(|port| format!("amqp://guest:guest@127.0.0.1:{}/%2f", port.trim()))
            .collect(),
    );
    crate::print_header(events, &format!("local 3-node cluster {url}"));
    for queue_type in [QueueType::Classic, QueueType::Quorum] {
        for confirmed in [false, true] {
            let scenario = Scenario::new(100, Shape::Group(2, queue_type), confirmed);
            crate::scenario_rows(&urls, events, scenario, crate::RowSet::default()).await?;
        }
    }
    drop(running);
    Ok(())
}
