//! Reading a dead letter's body: into the event when this process knows
//! its type, and into JSON for display, by the writer's schema from the
//! schema stream when the body is bincode.

use std::collections::HashMap;
use std::sync::Arc;

use super::letter::DeadLetterMessage;
use crate::amqp::props::AmqpProps;
use crate::codec::{Codec, Codecs, JSON_CONTENT_TYPE};
use crate::compression::{Inflate, decompress};
use crate::event::{Event, registered_events};
use crate::schema::{Fingerprint, Schema};

/// The schemas of the exchange's stream, read once, on first need.
pub(super) struct Writers {
    props: AmqpProps,
    codecs: Codecs,
    by_fingerprint: tokio::sync::OnceCell<HashMap<Fingerprint, Arc<Schema>>>,
}

impl Writers {
    pub(super) fn new(props: &AmqpProps) -> Self {
        Self {
            props: props.clone(),
            codecs: Codecs::new(props.codec().clone()),
            by_fingerprint: tokio::sync::OnceCell::new(),
        }
    }

    /// The writer's schema of `fingerprint`, from the schema stream.
    async fn find(&self, fingerprint: Fingerprint) -> Result<Option<Arc<Schema>>, String> {
        let stored = self
            .by_fingerprint
            .get_or_try_init(|| async {
                let schemas = crate::transport::schema_stream::read_stored(&self.props).await?;
                Ok::<_, crate::Error>(
                    schemas
                        .into_iter()
                        .map(|s| (s.fingerprint(), Arc::new(s)))
                        .collect(),
                )
            })
            .await
            .map_err(|e| format!("the schema stream could not be read: {e}"))?;
        Ok(stored.get(&fingerprint).cloned())
    }

    /// Fills in the letter's event, JSON, or why not.
    pub(super) async fn decode(&self, letter: &mut DeadLetterMessage) {
        if let Err(note) = self.try_decode(letter).await {
            letter.note = Some(note);
        }
    }

    async fn try_decode(&self, letter: &mut DeadLetterMessage) -> Result<(), String> {
        if letter.body_dropped() {
            return Err(format!(
                "the body ({} bytes) was dropped when it was dead-lettered",
                letter.body_size()
            ));
        }
        let codec = self
            .codecs
            .for_content_type(letter.content_type())
            .map_err(|e| e.to_string())?;
        // Read as a receiver reads it: decompressed, bounded.
        let encoding = letter
            .properties
            .content_encoding()
            .as_ref()
            .map(|e| e.as_str());
        let body = decompress(&letter.body, encoding, self.props.max_message_size())
            .map_err(|e| match e {
                Inflate::Bomb(why) | Inflate::Unknown(why) | Inflate::Corrupt(why) => why,
            })?
            .into_owned();
        let tag = letter.tag().map(str::to_owned);
        let version = letter.version();
        let ours = match (&tag, registered_events()) {
            (Some(tag), Ok(events)) => events.get(tag, version),
            _ => None,
        };
        if codec.content_type() == JSON_CONTENT_TYPE {
            letter.json = Some(
                serde_json::from_slice(&body)
                    .map_err(|e| format!("the body is not valid JSON: {e}"))?,
            );
            if let Some(ours) = ours {
                let event = codec
                    .decode::<Box<dyn Event>>(&body)
                    .map_err(|e| e.to_string())?;
                if event.tag() != ours.tag() || event.version() != ours.version() {
                    return Err(format!(
                        "the body holds {:?} version {}, not the {:?} version {} its headers say",
                        event.tag(),
                        event.version(),
                        ours.tag(),
                        ours.version()
                    ));
                }
                letter.event = Some(event);
            }
            return Ok(());
        }
        let fingerprint = letter.fingerprint();
        if let Some(ours) = ours
            && fingerprint == Some(ours.fingerprint())
            && !ours.schema().is_traced()
        {
            // Its format is unknown, so no JSON; typetag reads it.
            letter.event = Some(
                codec
                    .decode::<Box<dyn Event>>(&body)
                    .map_err(|e| e.to_string())?,
            );
            return Err(format!(
                "the type of {:?} could not be traced, so its {} body is shown by tag and size",
                ours.tag(),
                codec.content_type()
            ));
        }
        let writer = match (ours, fingerprint) {
            (Some(ours), Some(fp)) if ours.fingerprint() == fp => Arc::new(ours.schema().clone()),
            (_, Some(fp)) => self.find(fp).await?.ok_or_else(|| {
                format!("the writer's schema {fp} is not in the schema stream, so this process cannot read the body")
            })?,
            (_, None) => {
                return Err("the message carries no schema fingerprint, so its body cannot be read".to_owned());
            }
        };
        let wire_name = writer.wire_name();
        let mut value = writer.read(&body, codec as &dyn Codec, &wire_name)?;
        let mut object = serde_json::Map::new();
        object.insert(wire_name, value.to_json());
        letter.json = Some(serde_json::Value::Object(object));
        if let Some(ours) = ours
            && writer.tag() == ours.tag()
            && writer.version() == ours.version()
        {
            writer.rename_for(ours.schema(), &mut value);
            letter.event = Some(ours.read(value, false)?);
        }
        Ok(())
    }
}
