//! How messages are shown: a block of text for people, or one JSON object
//! per line for scripts.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tidings::lapin::types::{AMQPValue, FieldTable};

/// What is shown of one message.
#[derive(Debug, Default)]
pub(crate) struct Shown {
    pub(crate) tag: Option<String>,
    pub(crate) version: u32,
    pub(crate) routing_key: Option<String>,
    pub(crate) message_id: Option<String>,
    pub(crate) origin: Option<String>,
    pub(crate) timestamp: Option<std::time::SystemTime>,
    pub(crate) content_type: Option<String>,
    pub(crate) headers: BTreeMap<String, Value>,
    pub(crate) size: usize,
    /// The body as JSON, when it can be shown so.
    pub(crate) body: Option<Value>,
    /// Why the body is not shown, when it is not.
    pub(crate) note: Option<String>,
    /// Lines shown first (a dead letter's why).
    pub(crate) extra: Vec<(&'static str, String)>,
}

impl Shown {
    /// A block of text: a title line, fields, headers, the body.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        let version = if self.version > 1 {
            format!(" v{}", self.version)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "── {}{version}  ({} bytes)\n",
            self.tag.as_deref().unwrap_or("(no tag)"),
            self.size
        ));
        let mut field = |label: &str, value: &str| {
            out.push_str(&format!("  {:<13} {value}\n", format!("{label}:")))
        };
        for (name, value) in &self.extra {
            field(name, value);
        }
        field("routing key", &or_none(&self.routing_key));
        field("message id", &or_none(&self.message_id));
        field("origin", &or_none(&self.origin));
        if let Some(at) = self.timestamp {
            field("published", &crate::time::show(at));
        }
        field("content type", &or_none(&self.content_type));
        if !self.headers.is_empty() {
            out.push_str("  headers:\n");
            for (name, value) in &self.headers {
                let value = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                out.push_str(&format!("    {name}: {value}\n"));
            }
        }
        match (&self.body, &self.note) {
            (Some(body), _) => {
                let pretty = serde_json::to_string_pretty(body).unwrap_or_default();
                for line in pretty.lines() {
                    out.push_str(&format!("  {line}\n"));
                }
            }
            (None, Some(note)) => out.push_str(&format!("  body: {} bytes ({note})\n", self.size)),
            (None, None) => out.push_str(&format!("  body: {} bytes\n", self.size)),
        }
        out
    }

    /// One JSON object.
    pub(crate) fn json(&self) -> Value {
        let mut object = json!({
            "tag": self.tag,
            "version": self.version,
            "routing_key": self.routing_key,
            "message_id": self.message_id,
            "origin": self.origin,
            "timestamp": self.timestamp.map(crate::time::show),
            "content_type": self.content_type,
            "headers": self.headers,
            "size": self.size,
            "body": self.body,
        });
        if let Some(map) = object.as_object_mut() {
            if let Some(note) = &self.note {
                map.insert("body_note".to_owned(), json!(note));
            }
            for (name, value) in &self.extra {
                map.insert(name.replace(' ', "_"), json!(value));
            }
        }
        object
    }
}

/// A string header.
pub(crate) fn header_text(table: Option<&FieldTable>, name: &str) -> Option<String> {
    match table?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.to_string()),
        _ => None,
    }
}
