//! Drivers by URL scheme: `amqp`/`amqps` and `memory` are built in, and a
//! user can register a transport of their own for a scheme.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use super::amqp::AmqpTransport;
use super::memory::MemoryTransport;
use super::seam::{BoxFuture, Endpoint, Transport};
use crate::amqp::props::AmqpProps;
use crate::error::{Error, ErrorKind, Result};

/// Opens a transport for an endpoint.
pub type Driver =
    Arc<dyn Fn(Endpoint) -> BoxFuture<'static, Result<Arc<dyn Transport>>> + Send + Sync>;

static DRIVERS: LazyLock<RwLock<HashMap<String, Driver>>> = LazyLock::new(Default::default);

/// **Registers a transport for a URL scheme**, so that
/// [`Bus::connect`](crate::Bus::connect) and
/// [`Bus::builder`](crate::Bus::builder) open `scheme://...` with it. The
/// built-in schemes (`amqp`, `amqps`, `memory`) cannot be replaced; a
/// second registration of a scheme replaces the first.
///
/// # Errors
///
/// [`ErrorKind::InvalidConfig`] for a built-in or malformed scheme.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tidings::Result<()> {
/// use std::sync::Arc;
/// use tidings::{Bus, Endpoint, MemoryTransport, Transport, register_driver};
///
/// // "loop://name" is the memory transport under another name.
/// register_driver("loop", |endpoint: Endpoint| {
///     Box::pin(async move {
///         let name = endpoint.url.trim_start_matches("loop://").to_owned();
///         let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::named(&name));
///         Ok(transport)
///     })
/// })?;
/// let bus = Bus::connect("loop://demo").await?;
/// bus.close().await?;
/// # Ok(()) }
/// ```
pub fn register_driver<F>(scheme: &str, open: F) -> Result<()>
where
    F: Fn(Endpoint) -> BoxFuture<'static, Result<Arc<dyn Transport>>> + Send + Sync + 'static,
{
    let valid = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid || matches!(scheme, "amqp" | "amqps" | "memory") {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "cannot register a driver for the scheme {scheme:?}: it is built in or not a URL scheme"
            ),
        ));
    }
    DRIVERS
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(scheme.to_owned(), Arc::new(open));
    Ok(())
}

/// Checks that a URL names a transport tidings can open, before connecting.
pub(crate) fn check(url: &str) -> Result<()> {
    let endpoint = Endpoint::new(url);
    match endpoint.scheme() {
        "amqp" | "amqps" => AmqpProps::from_url(url).map(drop),
        "memory" => super::memory::parse_url(url).map(drop),
        scheme if driver(scheme).is_some() => Ok(()),
        _ => Err(unknown_scheme(url)),
    }
}

fn driver(scheme: &str) -> Option<Driver> {
    DRIVERS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(scheme)
        .cloned()
}

fn unknown_scheme(url: &str) -> Error {
    let shown = url.split_once("://").map_or(url, |(scheme, _)| scheme);
    Error::new(
        ErrorKind::InvalidConfig,
        format!(
            "no transport for the URL scheme {shown:?}; use amqp://, amqps://, memory://, or register one with register_driver"
        ),
    )
}

/// Opens the transport `endpoint` names.
pub(crate) async fn open(endpoint: Endpoint) -> Result<Arc<dyn Transport>> {
    match endpoint.scheme() {
        "amqp" | "amqps" => {
            let props = AmqpProps::from_url(&endpoint.url)?;
            open_amqp(&props, &endpoint).await
        }
        "memory" => {
            let name = super::memory::parse_url(&endpoint.url)?;
            Ok(Arc::new(MemoryTransport::named(name)))
        }
        scheme => match driver(scheme) {
            Some(open) => open(endpoint).await,
            None => Err(unknown_scheme(&endpoint.url)),
        },
    }
}

/// Opens RabbitMQ with `props`.
pub(crate) async fn open_amqp(
    props: &AmqpProps,
    endpoint: &Endpoint,
) -> Result<Arc<dyn Transport>> {
    Ok(Arc::new(AmqpTransport::open(props, endpoint).await?))
}
