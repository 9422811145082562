//! Where schemas are kept: this process's own store (what `memory://` and
//! transports without a store of their own use), and each bus's cache of
//! the writers' schemas it looked up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Schema;
use crate::event::Fingerprint;
use crate::transport::seam::Transport;

/// The schemas stored in this process, by fingerprint.
pub(crate) fn local() -> &'static Mutex<HashMap<Fingerprint, Arc<Schema>>> {
    static LOCAL: OnceLock<Mutex<HashMap<Fingerprint, Arc<Schema>>>> = OnceLock::new();
    LOCAL.get_or_init(Mutex::default)
}

/// How long a fingerprint found in no store is not looked up again, so that
/// a stream of events with made-up fingerprints does not read the store for
/// each.
const MISSING_FOR: Duration = Duration::from_secs(30);

/// How many fingerprints a cache remembers.
const CACHED: usize = 4096;

/// A bus's cache of writers' schemas.
#[derive(Debug, Default)]
pub(crate) struct SchemaCache {
    found: Mutex<HashMap<Fingerprint, Arc<Schema>>>,
    missing: Mutex<HashMap<Fingerprint, Instant>>,
}

impl SchemaCache {
    /// The writer's schema of `fingerprint`, from the cache or the
    /// transport's store; `None` when no store has it.
    pub(crate) async fn find(
        &self,
        fingerprint: Fingerprint,
        transport: &dyn Transport,
    ) -> Option<Arc<Schema>> {
        if let Some(schema) = lock(&self.found).get(&fingerprint) {
            return Some(schema.clone());
        }
        if lock(&self.missing)
            .get(&fingerprint)
            .is_some_and(|since| since.elapsed() < MISSING_FOR)
        {
            return None;
        }
        let found = match transport.find_schema(fingerprint).await {
            Ok(found) => found.filter(|schema| schema.fingerprint() == fingerprint),
            Err(e) => {
                tracing::warn!(%fingerprint, error = %e, "the schema store could not be read");
                None
            }
        };
        match &found {
            Some(schema) => {
                let mut cache = lock(&self.found);
                if cache.len() >= CACHED {
                    cache.clear();
                }
                cache.insert(fingerprint, schema.clone());
            }
            None => {
                let mut missing = lock(&self.missing);
                if missing.len() >= CACHED {
                    missing.retain(|_, since| since.elapsed() < MISSING_FOR);
                }
                if missing.len() < CACHED {
                    missing.insert(fingerprint, Instant::now());
                }
            }
        }
        found
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
