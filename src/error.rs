//! The one error type of tidings.

use std::fmt;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error a handler may return.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// For [`ErrorKind::Remote`]: the type of the server's error.
    remote_type: Option<Box<str>>,
}

/// **What kind of failure an [`Error`] is.**
///
/// New kinds may be added in any release, so a `match` needs a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad settings: a malformed URL, an unknown query key, a name that is too
    /// long, a CA file that cannot be read or holds no certificate.
    InvalidConfig,
    /// The broker could not be reached: refused, unreachable, no answer
    /// within the connect timeout, not an AMQP server, or a failed TLS
    /// handshake (such as a certificate that was not accepted).
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
    /// A [call](crate::Bus::call) found no server: no bus serves that
    /// request type (or no server of that name runs). Reported at once,
    /// not after the call's timeout.
    NoResponder,
    /// A [call](crate::Bus::call)'s server failed to handle the request:
    /// the message says what the server's handler said, and
    /// [`Error::remote_type`] the type of its error.
    Remote,
    /// The connection was lost while a call waited for its reply: the
    /// request may or may not have been handled.
    ConnectionLost,
}

impl Error {
    /// **An error of this kind with this message**: for a [`Codec`] or a
    /// [`Transport`] written outside tidings. The message says what went
    /// wrong and what to do, in lowercase.
    ///
    /// [`Codec`]: crate::Codec
    /// [`Transport`]: crate::Transport
    ///
    /// ```
    /// let err = tidings::Error::new(tidings::ErrorKind::Decode, "not a valid frame");
    /// assert_eq!(err.to_string(), "not a valid frame");
    /// ```
    #[must_use]
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            remote_type: None,
        }
    }

    /// An [`ErrorKind::Remote`] error: the server's `message`, and the type
    /// of its error.
    pub(crate) fn remote(message: impl Into<String>, remote_type: &str) -> Self {
        Self {
            remote_type: Some(remote_type.into()),
            ..Self::new(ErrorKind::Remote, message)
        }
    }

    /// For an [`ErrorKind::Remote`] error, **the type of the error the
    /// server's handler returned** (such as `"my_service::OutOfStock"`, or
    /// `"panic"` when it panicked); `None` for other errors.
    #[must_use]
    pub fn remote_type(&self) -> Option<&str> {
        self.remote_type.as_deref()
    }

    /// An error of this kind with this message, caused by `source`.
    #[must_use]
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Source>,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(source.into()),
            remote_type: None,
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

    /// Classifies a lapin error from opening a connection to `url` (with
    /// TLS when `tls`, presenting a client certificate when
    /// `client_cert`): refused credentials, a server that does not speak
    /// AMQP, a TLS certificate or handshake failure, or the generic cases.
    pub(crate) fn connect(url: &str, tls: bool, client_cert: bool, err: lapin::Error) -> Self {
        match connect_cause(tls, client_cert, &err) {
            Some(ConnectCause::Refused) => {
                let message = format!(
                    "connecting to {url} failed: {err}; check the user name, password and virtual host"
                );
                Self::with_source(ErrorKind::Authentication, message, err)
            }
            Some(ConnectCause::Other { what, todo }) => Self::with_source(
                ErrorKind::Connect,
                format!("connecting to {url} failed: {what} ({err}); {todo}"),
                err,
            ),
            None => Self::amqp(&format!("connecting to {url}"), err),
        }
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

/// What a failed connect means, when it is more than "unreachable".
#[derive(Debug, PartialEq, Eq)]
enum ConnectCause {
    /// The broker refused the credentials or the virtual host.
    Refused,
    /// Reached something, but not a broker that completed the handshake.
    Other {
        what: &'static str,
        todo: &'static str,
    },
}

fn connect_cause(tls: bool, client_cert: bool, err: &lapin::Error) -> Option<ConnectCause> {
    use lapin::ErrorKind as L;
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    match err.kind() {
        L::ProtocolError(e)
            if matches!(
                e.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            ) =>
        {
            Some(ConnectCause::Refused)
        }
        // Bytes that are no AMQP frame: an HTTP server, SSH, a database...
        L::ParsingError(_) | L::InvalidProtocolVersion(_) => Some(ConnectCause::Other {
            what: "the server there is not an AMQP server (it answered with something other than AMQP 0-9-1)",
            todo: "check the host and port: RabbitMQ listens on 5672 for amqp:// and 5671 for amqps://",
        }),
        L::IOError(io) if tls => tls_cause(&io.to_string()).or_else(|| {
            // Under TLS 1.3 a broker checks a client's certificate after
            // the client finished its handshake: its refusal may arrive as
            // an alert (above) or, racing the client's first bytes, as a
            // closed connection.
            let closed = matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            );
            (client_cert && closed).then_some(ConnectCause::Other {
                what: "the broker closed the connection right after the TLS handshake, as it does when it refuses this client's certificate",
                todo: CLIENT_CERTIFICATE_TODO,
            })
        }),
        _ => None,
    }
}

/// What to check when the broker refuses a client certificate.
const CLIENT_CERTIFICATE_TODO: &str = "check the client certificate (certfile and keyfile, or with_client_cert) is signed by a CA the broker trusts (its ssl_options.cacertfile), has not expired, and is the one meant for this client";

/// Recognizes a TLS failure by the text of the TLS library's error (rustls
/// is not a direct dependency, so its error type cannot be matched).
fn tls_cause(text: &str) -> Option<ConnectCause> {
    let certificate_refused = |what| {
        Some(ConnectCause::Other {
            what,
            todo: CLIENT_CERTIFICATE_TODO,
        })
    };
    // The broker refused this client's certificate (mutual TLS): a TLS
    // alert naming the certificate.
    if text.contains("received fatal alert: CertificateRequired") {
        return certificate_refused(
            "the broker requires a client certificate (mutual TLS) and none was given",
        );
    }
    if [
        "received fatal alert: BadCertificate",
        "received fatal alert: UnknownCA",
        "received fatal alert: CertificateUnknown",
        "received fatal alert: CertificateExpired",
        "received fatal alert: UnsupportedCertificate",
    ]
    .iter()
    .any(|alert| text.contains(alert))
    {
        return certificate_refused("the broker refused this client's TLS certificate");
    }
    let specific = if text.contains("UnknownIssuer") {
        Some((
            "the broker's TLS certificate was not accepted: it is signed by a CA this client does not trust",
            "check the CA file (cacertfile or with_ca_file) holds the CA that signed the broker's certificate",
        ))
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        Some((
            "the broker's TLS certificate was not accepted: it does not name the host connected to",
            "connect with a host name the certificate names (in its subjectAltName), or have the broker's certificate reissued for this one; check the CA file too",
        ))
    } else if text.contains("Expired") || text.contains("certificate expired") {
        Some((
            "the broker's TLS certificate was not accepted: it has expired",
            "renew the broker's certificate, or check this machine's clock; check the CA file too",
        ))
    } else if text.contains("NotValidYet") || text.contains("not valid yet") {
        Some((
            "the broker's TLS certificate was not accepted: it is not valid yet",
            "check this machine's clock, or the broker certificate's start date; check the CA file too",
        ))
    } else {
        None
    };
    if let Some((what, todo)) = specific {
        return Some(ConnectCause::Other { what, todo });
    }
    if text.contains("certificate") {
        // rustls: "invalid peer certificate: UnknownIssuer", "...: NotValidForName",
        // "...: Expired", "peer sent no certificates".
        Some(ConnectCause::Other {
            what: "the broker's TLS certificate was not accepted",
            todo: "check the CA file (cacertfile or with_ca_file) holds the CA that signed the broker's certificate, that the certificate has not expired, and that the host name is one it names",
        })
    } else if text.contains("received corrupt message")
        || text.contains("received unexpected message")
    {
        Some(ConnectCause::Other {
            what: "the server did not answer with TLS",
            todo: "check the port (RabbitMQ listens for amqps:// on 5671), or use amqp:// if the broker has no TLS",
        })
    } else if text.contains("received fatal alert")
        || text.contains("peer is incompatible")
        || text.contains("peer misbehaved")
    {
        Some(ConnectCause::Other {
            what: "the TLS handshake with the broker failed",
            todo: "check that the broker's TLS settings (versions, ciphers, client certificates) accept this client",
        })
    } else {
        None
    }
}

/// Whether the broker answered that the queue or exchange asked for does
/// not exist (404 NOT_FOUND, which closes the channel).
pub(crate) fn is_not_found(err: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(e)
        if e.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
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
        if let Some(remote_type) = &self.remote_type {
            s.field("remote_type", remote_type);
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
    fn a_reset_after_presenting_a_client_certificate_points_at_the_certificate() {
        let reset = || -> lapin::Error {
            lapin::ErrorKind::IOError(std::sync::Arc::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )))
            .into()
        };
        let with_cert = Error::connect("amqps://mq:5671", true, true, reset()).to_string();
        assert!(with_cert.contains("client's certificate"), "{with_cert}");
        assert!(with_cert.contains("certfile"), "{with_cert}");
        assert!(!with_cert.contains("broker is running"), "{with_cert}");
        let without = Error::connect("amqps://mq:5671", true, false, reset()).to_string();
        assert!(without.contains("broker is running"), "{without}");
    }

    fn io(text: &str) -> lapin::Error {
        lapin::ErrorKind::IOError(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            text.to_owned(),
        )))
        .into()
    }

    #[test]
    fn certificate_errors_say_certificate_not_broker_running() {
        // The texts rustls 0.23 gives its certificate errors.
        for text in [
            "invalid peer certificate: UnknownIssuer",
            "invalid peer certificate: NotValidForName",
            "invalid peer certificate: Expired",
            "invalid peer certificate: BadSignature",
            "peer sent no certificates",
        ] {
            // Each also says which is wrong with the certificate.
            let which = match text {
                t if t.contains("UnknownIssuer") => "a CA this client does not trust",
                t if t.contains("NotValidForName") => "does not name the host",
                t if t.contains("Expired") => "it has expired",
                _ => "",
            };
            let err = Error::connect("amqps://u:***@mq:5671/%2F", true, false, io(text));
            assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
            let message = err.to_string();
            assert!(
                message.contains("certificate was not accepted"),
                "{message}"
            );
            assert!(message.contains(text), "{message}");
            assert!(message.contains(which), "{message}");
            assert!(message.contains("check the CA file"), "{message}");
            assert!(!message.contains("broker is running"), "{message}");
        }
    }

    #[test]
    fn other_tls_failures_are_named() {
        let plain = Error::connect(
            "amqps://mq:5672",
            true,
            false,
            io("received corrupt message of type InvalidContentType"),
        );
        assert!(
            plain.to_string().contains("did not answer with TLS"),
            "{plain}"
        );
        let alert = Error::connect(
            "amqps://mq:5671",
            true,
            false,
            io("received fatal alert: HandshakeFailure"),
        );
        assert!(alert.to_string().contains("TLS handshake"), "{alert}");
        // Without TLS the same words are not read as a TLS failure.
        let refused = Error::connect("amqp://mq:5672", false, false, io("certificate"));
        assert!(
            refused.to_string().contains("broker is running"),
            "{refused}"
        );
        let refused = Error::connect("amqps://mq:5671", true, false, io("Connection refused"));
        assert!(
            refused.to_string().contains("broker is running"),
            "{refused}"
        );
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
