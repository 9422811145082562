//! The dedup window: the (publisher, message id) keys handled lately.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;

/// The message ids handled lately, oldest first out.
///
/// Each id is kept as a 128-bit key made of two independently, randomly
/// keyed SipHashes of it, computed once per event outside the lock: no
/// allocation per id, and a wrong match (which would drop an event as a
/// duplicate) needs a 128-bit collision that the sender cannot aim for
/// without the random keys.
#[derive(Default)]
pub(crate) struct Recent {
    hashers: (RandomState, RandomState),
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    keys: HashSet<u128, BuildHasherDefault<KeyHasher>>,
    order: VecDeque<u128>,
}

impl Recent {
    /// The key of a message: its publisher and its id, so that a foreign
    /// publisher reusing an id cannot suppress another's events.
    pub(super) fn key(&self, origin: &str, id: &str) -> u128 {
        let key = (origin, id);
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn contains(&self, key: u128) -> bool {
        self.window().keys.contains(&key)
    }

    pub(super) fn remember(&self, key: u128, size: usize) {
        let mut window = self.window();
        if size == 0 || !window.keys.insert(key) {
            return;
        }
        window.order.push_back(key);
        while window.order.len() > size {
            if let Some(oldest) = window.order.pop_front() {
                window.keys.remove(&oldest);
            }
        }
    }
}

/// Hashes a key that is a keyed hash already: its low 64 bits.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, key: u128) {
        // Truncation intended: the low half of a keyed hash.
        #[allow(clippy::cast_possible_truncation)]
        let low = key as u64;
        self.0 = low;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_are_bounded_by_the_window() {
        let recent = Recent::default();
        let key = |id| recent.key("origin", id);
        for id in ["a", "b", "c", "b"] {
            recent.remember(key(id), 2);
        }
        assert!(!recent.contains(key("a")), "the oldest id left the window");
        assert!(recent.contains(key("b")) && recent.contains(key("c")));
        assert_eq!(recent.window().order.len(), 2);
        recent.remember(key("d"), 0);
        assert!(
            !recent.contains(key("d")),
            "a zero window remembers nothing"
        );
    }
}
