//! A small, fast hasher for maps keyed by the event tags this process
//! knows (its registry, its per-tag counters): FNV-1a.
//!
//! Not for keys a peer chooses freely *and* inserts: FNV is unkeyed, so a
//! sender could aim many keys at one bucket. The registry is built at
//! start-up and only searched with tags from the wire (a search for a
//! crafted tag costs at most one more comparison); the counters by tag
//! only hold tags of registered types.

use std::hash::{BuildHasherDefault, Hasher};

/// Builds [`Fnv`] hashers.
pub(crate) type FnvBuild = BuildHasherDefault<Fnv>;

/// 64-bit FNV-1a.
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
