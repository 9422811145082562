//! The one error type of tidings.

use std::fmt;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// **Everything that can go wrong in tidings**: what happened, in words, and
/// what kind of failure it was.
///
/// Match on [`Error::kind`] to react; print the error (`Display`) to tell a
/// person. Errors of dependencies (lapin, bincode, serde_json, I/O) are kept
/// as the [`source`](std::error::Error::source), never as public variants.
///
/// # Examples
///
/// ```
/// use tidings::{AmqpProps, ErrorKind};
///
/// let err = AmqpProps::from_url("http://localhost").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidConfig);
/// assert!(err.to_string().contains("unknown scheme"));
/// ```
#[derive(thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Source>,
}

/// **What kind of failure an [`Error`] is.**
///
/// New kinds may be added in any release, so a `match` needs a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad settings: a malformed URL, an unknown query key, a name that is too
    /// long, an unreadable CA file.
    InvalidConfig,
    /// The broker could not be reached: refused, unreachable, or no answer
    /// within the connect timeout.
    Connect,
    /// The broker refused the user name or password.
    Authentication,
    /// The broker closed a channel or the connection, or refused an operation
    /// (for example declaring an exchange that exists with another kind).
    Broker,
    /// The connection, channel or consumer is closed; nothing more can be
    /// sent or received through it.
    Closed,
    /// A value could not be encoded by the codec.
    Encode,
    /// A message body could not be decoded: malformed, truncated, trailing
    /// bytes, or a length prefix beyond the decode limit.
    Decode,
    /// A message carries a `content-type` no configured codec handles.
    UnknownContentType,
    /// A message body is larger than the configured maximum message size.
    MessageTooLarge,
    /// The broker negatively acknowledged (nacked) a confirmed publish.
    Nacked,
    /// The broker refused one message by closing the channel it was
    /// published on (for example, a body over the broker's
    /// `max_message_size`); that message alone failed and was not sent
    /// again.
    Refused,
    /// The broker returned a mandatory publish because no queue was bound to
    /// its routing key.
    Unroutable,
    /// An operation did not finish in time.
    Timeout,
    /// An API was used in a way that cannot work, such as a blocking call
    /// made from inside an async runtime.
    Usage,
    /// A callback or handler failed or panicked.
    Handler,
    /// The publish buffer is full (the broker is slow or unreachable) and
    /// the props say to fail rather than wait
    /// ([`WhenFull::Fail`](crate::WhenFull::Fail)).
    BufferFull,
    /// The broker has blocked the connection (a memory or disk alarm) and
    /// the props say to fail rather than wait.
    Blocked,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Source>,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Classifies a lapin error that happened while `doing` something (a
    /// short lowercase phrase such as `"declaring exchange \"orders\""`).
    pub(crate) fn amqp(doing: &str, err: lapin::Error) -> Self {
        let kind = amqp_kind(&err);
        let hint = match kind {
            ErrorKind::Connect => "; check that the broker is running and the host and port",
            _ => "",
        };
        Self::with_source(kind, format!("{doing} failed: {err}{hint}"), err)
    }

    /// Classifies a lapin error from opening a connection, where a refusal
    /// by the broker means the credentials or the virtual host are wrong.
    pub(crate) fn connect(url: &str, err: lapin::Error) -> Self {
        use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
        let refused = match err.kind() {
            lapin::ErrorKind::ProtocolError(e) => matches!(
                e.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            ),
            _ => false,
        };
        if refused {
            let message = format!(
                "connecting to {url} failed: {err}; check the user name, password and virtual host"
            );
            return Self::with_source(ErrorKind::Authentication, message, err);
        }
        Self::amqp(&format!("connecting to {url}"), err)
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the settings were wrong ([`ErrorKind::InvalidConfig`]).
    #[must_use]
    pub fn is_config(&self) -> bool {
        self.kind == ErrorKind::InvalidConfig
    }

    /// Whether the broker could not be reached or refused the credentials.
    #[must_use]
    pub fn is_connect(&self) -> bool {
        matches!(self.kind, ErrorKind::Connect | ErrorKind::Authentication)
    }

    /// Whether a message could not be decoded, for any reason that lies in
    /// the message itself (bad bytes, unknown content type, too large).
    #[must_use]
    pub fn is_decode(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Decode | ErrorKind::UnknownContentType | ErrorKind::MessageTooLarge
        )
    }

    /// Whether the thing used is closed.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.kind == ErrorKind::Closed
    }
}

fn amqp_kind(err: &lapin::Error) -> ErrorKind {
    use lapin::ErrorKind as L;
    match err.kind() {
        L::IOError(_) | L::MissingHeartbeatError => ErrorKind::Connect,
        L::InvalidChannelState(..) | L::InvalidConnectionState(_) | L::InvalidChannel(_) => {
            ErrorKind::Closed
        }
        _ => ErrorKind::Broker,
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            s.field("source", source);
        }
        s.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_and_small() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
    }

    #[test]
    fn display_is_the_message_and_source_is_kept() {
        let io = std::io::Error::other("boom");
        let err = Error::with_source(ErrorKind::Connect, "connecting failed: boom", io);
        assert_eq!(err.to_string(), "connecting failed: boom");
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.is_connect());
    }
}
