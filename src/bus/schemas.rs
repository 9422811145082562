//! A bus's cache of the writers' schemas it found through its transport.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::runtime::lock;
use crate::schema::{Fingerprint, Schema};
use crate::transport::seam::Transport;

/// How many schemas a cache remembers.
const CACHED: usize = 4096;

/// A bus's cache of the writers' schemas it found. What is not found is
/// asked of the transport again next time (the schema may be on its way);
/// the transport bounds how often that costs a read of its store.
#[derive(Debug, Default)]
pub(crate) struct SchemaCache {
    found: Mutex<HashMap<Fingerprint, Arc<Schema>>>,
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
        let found = match transport.find_schema(fingerprint).await {
            Ok(found) => found.filter(|schema| schema.fingerprint() == fingerprint),
            Err(e) => {
                tracing::warn!(%fingerprint, error = %e, "the schema store could not be read");
                None
            }
        };
        if let Some(schema) = &found {
            let mut cache = lock(&self.found);
            if cache.len() >= CACHED {
                cache.clear();
            }
            cache.insert(fingerprint, schema.clone());
        }
        found
    }
}
