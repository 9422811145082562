//! **Event contracts**: the schemas of every event a crate publishes and
//! reads, kept in a lock file, checked in tests, compared between services,
//! and exported for other languages.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::amqp::props::AmqpProps;
use crate::error::{Error, ErrorKind, Result};
use crate::event::registered_events;
use crate::schema::{Incompatible, Schema};

/// The environment variable that makes [`Contract::check_lock_file`]
/// rewrite the lock file instead of checking against it.
pub const UPDATE_CONTRACT_ENV: &str = "TIDINGS_UPDATE_CONTRACT";

/// **The schemas of a set of event types**: this binary's, or a lock
/// file's.
///
/// # Examples
///
/// A test that keeps `events.lock` next to `Cargo.toml` and fails when an
/// event changes shape in a way that deployed readers or writers could not
/// follow:
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::{Contract, Event};
///
/// #[derive(Event, Serialize, Deserialize, Debug)]
/// #[event(name = "contract.order_placed")]
/// struct OrderPlaced { id: u64, coupon: Option<String> }
///
/// let lock = std::env::temp_dir().join(format!("events-{}.lock", std::process::id()));
/// Contract::check_lock_file(&lock)?; // writes it the first time
/// Contract::check_lock_file(&lock)?; // then checks against it
///
/// // Another service's contract: can it read all we publish?
/// let ours = Contract::of_this_binary()?;
/// assert!(Contract::read(&lock)?.can_read(&ours).is_ok());
/// let asyncapi = ours.to_asyncapi("shop");
/// assert_eq!(asyncapi["asyncapi"], "3.0.0");
/// # std::fs::remove_file(&lock).ok();
/// # Ok::<(), tidings::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    /// The format of this file.
    tidings_contract: u32,
    events: Vec<Schema>,
}

impl Contract {
    /// A contract of these schemas.
    #[must_use]
    pub fn new(schemas: impl IntoIterator<Item = Schema>) -> Self {
        let mut events: Vec<Schema> = schemas.into_iter().collect();
        events.sort_by(|a, b| (a.tag(), a.version()).cmp(&(b.tag(), b.version())));
        Self {
            tidings_contract: 1,
            events,
        }
    }

    /// **Every event type derived in this binary.**
    ///
    /// # Errors
    ///
    /// As [`registered_events`].
    pub fn of_this_binary() -> Result<Self> {
        let events = registered_events()?;
        Ok(Self::new(
            events.all().into_iter().map(|r| r.schema().clone()),
        ))
    }

    /// **What publishers stored on the broker**: the schemas in the schema
    /// stream `<exchange>.schemas` of the exchange of `props`, which every
    /// bus appends its event types to when it first publishes them. One
    /// entry per fingerprint: a tag and version can appear more than once
    /// when its shape changed compatibly between deploys (in the order they
    /// were stored). Empty when no bus has published on the exchange; the
    /// stream is then not created.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn example() -> tidings::Result<()> {
    /// use tidings::{AmqpProps, Contract};
    ///
    /// let props = AmqpProps::from_env()?.with_exchange("doc.contract", tidings::ExchangeKind::Topic);
    /// for schema in Contract::from_broker(&props).await?.events() {
    ///     println!("{} v{} {} {:?}", schema.tag(), schema.version(), schema.fingerprint(), schema.fields());
    /// }
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// The errors of [`Connection::connect`](crate::Connection::connect),
    /// and [`ErrorKind::Broker`] when the stream cannot be read.
    pub async fn from_broker(props: &AmqpProps) -> Result<Self> {
        let mut seen = std::collections::HashSet::new();
        let stored = crate::transport::schema_stream::read_stored(props).await?;
        Ok(Self::new(
            stored
                .into_iter()
                .filter(|schema| seen.insert(schema.fingerprint())),
        ))
    }

    /// The schemas, ordered by tag and version.
    #[must_use]
    pub fn events(&self) -> &[Schema] {
        &self.events
    }

    fn get(&self, tag: &str, version: u32) -> Option<&Schema> {
        self.events
            .iter()
            .find(|s| s.tag() == tag && s.version() == version)
    }

    /// Reads a lock file.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] when it cannot be read or is not a
    /// contract.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("cannot read the contract {}: {e}", path.display()),
                e,
            )
        })?;
        serde_json::from_slice(&text).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("{} is not a tidings contract: {e}", path.display()),
                e,
            )
        })
    }

    /// Writes the contract as pretty JSON.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] when the file cannot be written.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut text = serde_json::to_string_pretty(self).map_err(|e| {
            Error::with_source(
                ErrorKind::Encode,
                format!("cannot encode the contract: {e}"),
                e,
            )
        })?;
        text.push('\n');
        std::fs::write(path, text).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                format!("cannot write the contract {}: {e}", path.display()),
                e,
            )
        })
    }

    /// **Can a reader with this contract read everything a service with
    /// `publisher`'s contract publishes?** For each of the publisher's
    /// events that this contract has (same tag and version), [`Schema::can_read`];
    /// events of tags this contract does not have are not its concern, and a
    /// newer version than this contract knows of a tag it has is reported.
    ///
    /// # Errors
    ///
    /// Every incompatibility, as (tag, version, what).
    pub fn can_read(
        &self,
        publisher: &Self,
    ) -> std::result::Result<(), Vec<(String, u32, Incompatible)>> {
        let mut problems = Vec::new();
        for theirs in &publisher.events {
            if let Some(ours) = self.get(theirs.tag(), theirs.version()) {
                if let Err(found) = ours.can_read(theirs) {
                    problems.extend(
                        found
                            .into_iter()
                            .map(|i| (theirs.tag().to_owned(), theirs.version(), i)),
                    );
                }
            } else if let Some(newest) = self
                .events
                .iter()
                .filter(|s| s.tag() == theirs.tag())
                .map(Schema::version)
                .max()
                && theirs.version() > newest
            {
                problems.push((
                    theirs.tag().to_owned(),
                    theirs.version(),
                    Incompatible::whole(format!(
                        "the publisher sends version {} and the reader knows up to version {newest}",
                        theirs.version()
                    )),
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// **The test helper**: checks this binary's events against the lock
    /// file at `path`, and writes it when it does not exist or when
    /// `TIDINGS_UPDATE_CONTRACT=1` is set.
    ///
    /// An event whose shape changed must stay readable both ways (old
    /// readers read new events, new readers read old ones) or declare a new
    /// version; an event of the lock that is gone fails too. A compatible
    /// change, or a new event, passes and says that the lock file can be
    /// updated.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] naming each event and field that
    /// changed incompatibly, and how to go on.
    pub fn check_lock_file(path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let ours = Self::of_this_binary()?;
        let update = std::env::var(UPDATE_CONTRACT_ENV).is_ok_and(|v| v == "1");
        if update || !path.exists() {
            return ours.write(path);
        }
        let locked = Self::read(path)?;
        let mut report = String::new();
        let mut changed = Vec::new();
        for old in &locked.events {
            let (tag, version) = (old.tag(), old.version());
            let Some(new) = ours.get(tag, version) else {
                let _ = writeln!(
                    report,
                    "- event {tag:?} version {version} is in the contract and no type of this binary has it any more; deployed publishers may still send it"
                );
                continue;
            };
            if new.fingerprint() == old.fingerprint() {
                continue;
            }
            let mut problems = Vec::new();
            if let Err(found) = new.can_read(old) {
                problems.extend(
                    found
                        .into_iter()
                        .map(|i| format!("new readers cannot read old events: {i}")),
                );
            }
            if let Err(found) = old.can_read(new) {
                problems.extend(
                    found
                        .into_iter()
                        .map(|i| format!("old readers cannot read new events: {i}")),
                );
            }
            if problems.is_empty() {
                changed.push(format!("{tag:?} version {version}"));
            } else {
                let _ = writeln!(
                    report,
                    "- event {tag:?} version {version} changed incompatibly:"
                );
                for problem in problems {
                    let _ = writeln!(report, "    {problem}");
                }
            }
        }
        if report.is_empty() {
            let added = ours
                .events
                .iter()
                .filter(|s| locked.get(s.tag(), s.version()).is_none())
                .count();
            if !changed.is_empty() || added > 0 {
                tracing::info!(
                    path = %path.display(),
                    "the events changed compatibly ({}), {added} added; {UPDATE_CONTRACT_ENV}=1 updates the lock file",
                    changed.join(", ")
                );
            }
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "the events of this binary break the contract in {}:\n{report}make the change compatible (add fields as Option or #[serde(default)], rename with #[serde(alias)]), or declare a new version with #[event(version = N, upcast_from = ..)]; if every reader and writer is upgraded at once, accept it with {UPDATE_CONTRACT_ENV}=1",
                path.display()
            ),
        ))
    }

    /// **The JSON Schema of every event**, under `$defs` by
    /// `<tag>` (version 1) or `<tag>@v<N>`.
    #[must_use]
    pub fn to_json_schema(&self) -> serde_json::Value {
        let defs: serde_json::Map<String, serde_json::Value> = self
            .events
            .iter()
            .map(|s| (s.wire_name(), s.to_json_schema()))
            .collect();
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": defs,
        })
    }

    /// **An AsyncAPI 3.0 document**: one message per event (its JSON body
    /// `{"<tag>": ...}` as payload, its headers), on one channel, the
    /// exchange `exchange`.
    #[must_use]
    pub fn to_asyncapi(&self, exchange: &str) -> serde_json::Value {
        let mut messages = BTreeMap::new();
        let mut refs = serde_json::Map::new();
        for schema in &self.events {
            let name = schema.wire_name();
            let mut headers = json!({
                "type": "object",
                "properties": {
                    "x-tidings-tag": {"const": schema.tag()},
                    "x-tidings-fingerprint": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "x-origin": {"type": "string"},
                },
                "required": ["x-tidings-tag", "x-tidings-fingerprint"],
            });
            if schema.version() != 1 {
                headers["properties"]["x-tidings-version"] =
                    json!({"const": schema.version().to_string()});
                headers["required"] = json!([
                    "x-tidings-tag",
                    "x-tidings-fingerprint",
                    "x-tidings-version"
                ]);
            }
            messages.insert(
                name.clone(),
                json!({
                    "name": schema.tag(),
                    "title": format!("{} version {}", schema.tag(), schema.version()),
                    "contentType": crate::codec::JSON_CONTENT_TYPE,
                    "headers": headers,
                    "payload": {
                        "type": "object",
                        "properties": {name.clone(): schema.to_json_schema()},
                        "required": [name],
                        "additionalProperties": false,
                    },
                }),
            );
            refs.insert(
                schema.wire_name(),
                json!({"$ref": format!("#/components/messages/{}", schema.wire_name())}),
            );
        }
        json!({
            "asyncapi": "3.0.0",
            "info": {"title": exchange, "version": "1"},
            "channels": {
                exchange: {
                    "address": exchange,
                    "messages": refs,
                    "bindings": {"amqp": {"is": "routingKey", "exchange": {"name": exchange, "durable": true}}},
                }
            },
            "components": {"messages": messages},
        })
    }
}
