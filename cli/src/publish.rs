//! `tidings publish`: one JSON event, as a tidings bus sends it.

use std::io::Read as _;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use tidings::headers::{FINGERPRINT_HEADER, ORIGIN_HEADER, TAG_HEADER, VERSION_HEADER};
use tidings::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tidings::lapin::types::{AMQPValue, FieldTable, ShortString};
use tidings::lapin::{BasicProperties, Confirmation};
use tidings::{Contract, Error, ErrorKind, JSON_CONTENT_TYPE};

use crate::args::Publish;
use crate::broker::Broker;

pub(crate) async fn run(broker: &Broker, publish: &Publish) -> tidings::Result<ExitCode> {
    let fields = fields(&publish.json)?;
    let wire_name = if publish.version == 1 {
        publish.tag.clone()
    } else {
        format!("{}@v{}", publish.tag, publish.version)
    };
    let body = serde_json::to_vec(&serde_json::json!({ wire_name: fields })).map_err(|e| {
        Error::with_source(ErrorKind::Encode, format!("encoding the event: {e}"), e)
    })?;
    let routing_key = publish.routing_key.as_deref().unwrap_or(&publish.tag);
    let name = |what: &str, text: &str| {
        ShortString::try_new(text.to_owned()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "the {what} is {} bytes long; AMQP allows 255 at most",
                    text.len()
                ),
            )
        })
    };
    let routing_key = name("routing key", routing_key)?;

    // What publishers stored for this tag and version: the newest.
    let stored = Contract::from_broker(&broker.props)
        .await
        .map_err(|e| broker.explain(e))?;
    let fingerprint = stored
        .events()
        .iter()
        .rfind(|s| s.tag() == publish.tag && s.version() == publish.version)
        .map(tidings::Schema::fingerprint);

    let origin = format!("tidings-cli-{}", std::process::id());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let message_id = format!("{origin}-{}", now.as_nanos());
    let text = |s: &str| AMQPValue::LongString(s.into());
    let mut headers = FieldTable::default();
    headers.insert(TAG_HEADER.into(), text(&publish.tag));
    if let Some(fingerprint) = fingerprint {
        headers.insert(FINGERPRINT_HEADER.into(), text(&fingerprint.to_string()));
    }
    if publish.version != 1 {
        headers.insert(VERSION_HEADER.into(), text(&publish.version.to_string()));
    }
    headers.insert(ORIGIN_HEADER.into(), text(&origin));
    let properties = BasicProperties::default()
        .with_content_type(JSON_CONTENT_TYPE.into())
        .with_message_id(name("message id", &message_id)?)
        .with_timestamp(now.as_secs())
        .with_app_id("tidings-cli".into())
        .with_delivery_mode(2)
        .with_headers(headers);

    let conn = broker.connect_to_exchange().await?;
    let sent = async {
        let channel = conn.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Error::with_source(ErrorKind::Broker, format!("enabling confirms: {e}"), e))?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let failed = |e| Error::with_source(ErrorKind::Broker, format!("publishing failed: {e}"), e);
        let confirmation = channel
            .basic_publish(broker.exchange().into(), routing_key.clone(), options, &body, properties)
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Err(Error::new(
                ErrorKind::Unroutable,
                format!(
                    "no queue is bound to routing key {:?} on exchange {:?}, so nobody got the event; start a listener for it first, or check --routing-key",
                    routing_key.as_str(),
                    broker.exchange()
                ),
            )),
            Confirmation::Nack(None) => Err(Error::new(
                ErrorKind::Nacked,
                "the broker refused the event (nack); try again",
            )),
        }
    }
    .await;
    let _ = conn.close().await;
    sent?;
    if fingerprint.is_none() {
        eprintln!(
            "tidings: no schema of {:?} version {} is stored for exchange {:?}; published without a fingerprint (receivers read the JSON by field name)",
            publish.tag,
            publish.version,
            broker.exchange()
        );
    }
    println!("{message_id}");
    Ok(ExitCode::SUCCESS)
}

/// The event's fields: the argument, or standard input for `-`.
fn fields(arg: &str) -> tidings::Result<serde_json::Value> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("reading standard input: {e}"),
                e,
            )
        })?;
        text
    } else {
        arg.to_owned()
    };
    serde_json::from_str(&text).map_err(|e| {
        Error::with_source(
            ErrorKind::InvalidConfig,
            format!("the event is not valid JSON ({e}); give its fields, such as '{{\"id\": 7}}'"),
            e,
        )
    })
}
