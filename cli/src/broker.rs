//! The broker and exchange a command works on: props from the URL and
//! --exchange, connecting without creating anything, and errors that say
//! what to do.

use tidings::lapin::options::ExchangeDeclareOptions;
use tidings::lapin::types::FieldTable;
use tidings::{AmqpProps, Connection, Error, ErrorKind};

/// The broker and the exchange.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    pub(crate) props: AmqpProps,
}

impl Broker {
    /// From the URL and, when given, the exchange that overrides its
    /// `?exchange=`.
    pub(crate) fn new(url: &str, exchange: Option<&str>) -> tidings::Result<Self> {
        let props = AmqpProps::from_url(url).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("the broker URL is not valid: {e}; it looks like amqp://user:password@host:5672/%2f?exchange=NAME"),
                e,
            )
        })?;
        let props = match exchange {
            Some(name) => {
                let kind = props.exchange_kind();
                props.with_exchange(name, kind)
            }
            None => props,
        };
        let props = props.with_connection_name(format!("tidings-cli-{}", std::process::id()));
        props.validate()?;
        Ok(Self { props })
    }

    /// The exchange's name.
    pub(crate) fn exchange(&self) -> &str {
        self.props.exchange()
    }

    /// Connects, creating nothing.
    pub(crate) async fn connect(&self) -> tidings::Result<Connection> {
        Connection::connect_without_exchange(&self.props)
            .await
            .map_err(|e| self.explain(e))
    }

    /// Connects and checks that the exchange exists.
    pub(crate) async fn connect_to_exchange(&self) -> tidings::Result<Connection> {
        let conn = self.connect().await?;
        let channel = conn.channel().await?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let checked = channel
            .exchange_declare(
                self.exchange().into(),
                tidings::lapin::ExchangeKind::Fanout,
                options,
                FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "checked".into()).await;
        if let Err(e) = checked {
            let _ = conn.close().await;
            return Err(Error::with_source(
                ErrorKind::InvalidConfig,
                format!(
                    "there is no exchange {:?} on {} ({e}); check --exchange or the URL's ?exchange= (a bus creates its exchange when it connects)",
                    self.exchange(),
                    self.props.redacted_url()
                ),
                e,
            ));
        }
        Ok(conn)
    }

    /// Adds to a connect error how to get a broker.
    pub(crate) fn explain(&self, e: Error) -> Error {
        if e.kind() != ErrorKind::Connect {
            return e;
        }
        Error::with_source(
            ErrorKind::Connect,
            format!(
                "{e}; to start a broker here run `rabbitmq-server -detached` (or `docker run -d -p 5672:5672 rabbitmq`), or point --url or AMQP_URL at yours"
            ),
            e,
        )
    }
}
