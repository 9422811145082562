//! The dedup window: the (publisher, message id) keys handled lately, and
//! those being handled now, so that two deliveries of one message at once
//! reach the handlers once.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::Mutex;

use siphasher::sip128::{Hasher128, SipHasher13};
use tokio::sync::Notify;

/// The message ids handled lately, oldest first out.
///
/// Each id is kept as a 128-bit key, the SipHash-1-3-128 of it under a
/// random key of this bus, computed once per event outside the lock: no
/// allocation per id, and a wrong match (which would drop an event as a
/// duplicate) needs a 128-bit collision that the sender cannot aim for
/// without the random key.
pub(crate) struct Recent {
    /// The SipHash key.
    keys: (u64, u64),
    window: Mutex<Window>,
    /// Woken when a handling that others wait for ends.
    finished: Notify,
}

#[derive(Default)]
struct Window {
    keys: HashSet<u128, BuildHasherDefault<KeyHasher>>,
    order: VecDeque<u128>,
    /// The keys being handled now: no allocation per delivery, and waiters
    /// only when two deliveries of one id meet.
    in_flight: HashSet<u128, BuildHasherDefault<KeyHasher>>,
    /// Claims waiting for a handling to end.
    waiting: usize,
}

/// What [`Recent::claim`] found.
pub(super) enum Claim<'a> {
    /// Handled lately (perhaps just now, by a delivery handled at the same
    /// time): acknowledge it as a duplicate.
    Duplicate,
    /// This delivery handles it; the claim tells the others how it went.
    Mine(Handling<'a>),
}

/// A message id being handled by one delivery. Finished with
/// [`Handling::done`]; dropped unfinished (the handling was cancelled),
/// a delivery waiting on it handles the message itself.
pub(super) struct Handling<'a> {
    recent: &'a Recent,
    key: u128,
    /// Told already (by `done`).
    told: bool,
}

impl Default for Recent {
    fn default() -> Self {
        // std's random keys (from the OS, once per thread, then varied),
        // each drawn through a hash of nothing.
        let random = || RandomState::new().build_hasher().finish();
        Self {
            keys: (random(), random()),
            window: Mutex::default(),
            finished: Notify::new(),
        }
    }
}

impl Recent {
    /// The key of a message: its publisher and its id, so that a foreign
    /// publisher reusing an id cannot suppress another's events.
    pub(super) fn key(&self, origin: &str, id: &str) -> u128 {
        let mut hasher = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        // `str` hashes end in 0xff, which UTF-8 never holds: the pair is
        // unambiguous.
        origin.hash(&mut hasher);
        id.hash(&mut hasher);
        hasher.finish128().as_u128()
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub(super) fn contains(&self, key: u128) -> bool {
        self.window().keys.contains(&key)
    }

    /// **Claims a message id for handling, atomically**: a duplicate of one
    /// handled lately, or one of which another delivery is being handled
    /// now, in which case this waits for that outcome: handled, it is a
    /// duplicate; failed, this delivery claims it again and handles it.
    ///
    /// Cancel safe: a claim dropped while waiting takes nothing.
    pub(super) async fn claim(&self, key: u128) -> Claim<'_> {
        loop {
            // Registered before looking, so that no wake-up is missed.
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            {
                let mut window = self.window();
                if window.keys.contains(&key) {
                    return Claim::Duplicate;
                }
                if window.in_flight.insert(key) {
                    return Claim::Mine(Handling {
                        recent: self,
                        key,
                        told: false,
                    });
                }
                window.waiting += 1;
            }
            let _waiting = Waiting(self);
            finished.await;
        }
    }

    /// A handling ended: remembered if `handled` (in a window of `size`),
    /// and no longer in flight; waiters look again.
    fn finish(&self, key: u128, handled: bool, size: usize) {
        let wake = {
            let mut window = self.window();
            if handled {
                window.remember(key, size);
            }
            window.in_flight.remove(&key);
            window.waiting > 0
        };
        if wake {
            self.finished.notify_waiters();
        }
    }

    #[cfg(test)]
    pub(super) fn remember(&self, key: u128, size: usize) {
        self.window().remember(key, size);
    }
}

impl Window {
    fn remember(&mut self, key: u128, size: usize) {
        if size == 0 || !self.keys.insert(key) {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > size {
            if let Some(oldest) = self.order.pop_front() {
                self.keys.remove(&oldest);
            }
        }
    }
}

impl Handling<'_> {
    /// The handling ended: `handled`, the id is remembered (in a window of
    /// `size`) and deliveries waiting on it are duplicates; not, one of
    /// them handles it.
    pub(super) fn done(mut self, handled: bool, size: usize) {
        self.told = true;
        self.recent.finish(self.key, handled, size);
    }
}

/// A claim waiting for a handling to end, counted while it waits (also
/// when it is cancelled meanwhile).
struct Waiting<'a>(&'a Recent);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.window().waiting -= 1;
    }
}

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        // Unfinished (cancelled): as if it failed.
        if !self.told {
            self.recent.finish(self.key, false, 0);
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
    use crate::runtime::now_or_never;

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

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first_outcome() {
        let recent = Recent::default();
        let key = recent.key("origin", "m-1");
        let Claim::Mine(first) = recent.claim(key).await else {
            panic!("the first claim handles it");
        };
        // While the first is in flight, a second waits; the first fails, so
        // the second handles it.
        let second = recent.claim(key);
        tokio::pin!(second);
        assert!(now_or_never(second.as_mut()).is_none(), "waits");
        first.done(false, 10);
        let Claim::Mine(second) = second.await else {
            panic!("a failed first handling leaves it to the second");
        };
        // A third waits for the second, which succeeds: a duplicate.
        let third = recent.claim(key);
        tokio::pin!(third);
        assert!(now_or_never(third.as_mut()).is_none(), "waits");
        second.done(true, 10);
        assert!(matches!(third.await, Claim::Duplicate));
        assert!(matches!(recent.claim(key).await, Claim::Duplicate));
        // A handling dropped unfinished (cancelled) leaves it to the next.
        let other = recent.key("origin", "m-2");
        let Claim::Mine(dropped) = recent.claim(other).await else {
            panic!("fresh");
        };
        drop(dropped);
        let Claim::Mine(held) = recent.claim(other).await else {
            panic!("a dropped handling leaves it to the next claim");
        };
        // A waiting claim that is cancelled is not counted as waiting.
        {
            let cancelled = recent.claim(other);
            tokio::pin!(cancelled);
            assert!(now_or_never(cancelled.as_mut()).is_none());
            assert_eq!(recent.window().waiting, 1);
        }
        assert_eq!(recent.window().waiting, 0);
        held.done(true, 10);
        assert!(recent.window().in_flight.is_empty());
    }
}
