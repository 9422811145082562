//! `Declared`: queues this process declared lately, trusted to exist for a
//! while without asking the broker again.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::runtime::lock;

/// How long a declaration is trusted. Retry and delay queues expire ten
/// minutes after their last use; declaring one again renews that.
const FRESH: Duration = Duration::from_secs(60);

/// **Declarations made lately**, by key, each with what it gave (a name).
pub(super) struct Declared<K, V> {
    by_key: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash, V: Clone> Declared<K, V> {
    /// What the declaration of `key` gave, if it was made lately enough to
    /// trust.
    pub(super) fn fresh(&self, key: &K) -> Option<V> {
        lock(&self.by_key)
            .get(key)
            .filter(|(_, at)| at.elapsed() < FRESH)
            .map(|(value, _)| value.clone())
    }

    /// Notes that `key` was declared now.
    pub(super) fn remember(&self, key: K, value: V) {
        lock(&self.by_key).insert(key, (value, Instant::now()));
    }

    /// Forgets `key`, so that it is declared again next time.
    pub(super) fn forget(&self, key: &K) {
        lock(&self.by_key).remove(key);
    }

    /// Forgets every key `matches` holds for, and returns them.
    pub(super) fn take_matching(&self, matches: impl Fn(&K) -> bool) -> Vec<K>
    where
        K: Clone,
    {
        let mut by_key = lock(&self.by_key);
        let taken: Vec<K> = by_key.keys().filter(|key| matches(key)).cloned().collect();
        by_key.retain(|key, _| !matches(key));
        taken
    }
}

impl<K, V> Default for Declared<K, V> {
    fn default() -> Self {
        Self {
            by_key: Mutex::new(HashMap::new()),
        }
    }
}
