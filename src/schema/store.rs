//! This process's own store of schemas: what `memory://` and transports
//! without a store of their own use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::Fingerprint;
use super::Schema;

/// The schemas stored in this process, by fingerprint.
pub(crate) fn local() -> &'static Mutex<HashMap<Fingerprint, Arc<Schema>>> {
    static LOCAL: OnceLock<Mutex<HashMap<Fingerprint, Arc<Schema>>>> = OnceLock::new();
    LOCAL.get_or_init(Mutex::default)
}
