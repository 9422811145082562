//! The command line: every command and option, with the help text an
//! operator reads.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::broker::Broker;

/// The broker's default address, when neither --url nor AMQP_URL says.
pub(crate) const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Watch, publish to, and repair a tidings exchange on RabbitMQ.
///
/// Every command works on one exchange of one broker: the broker from
/// --url (or $AMQP_URL), the exchange from --exchange or the URL's
/// ?exchange= (default: tidings). Nothing is created on the broker except
/// the temporary queue `tail` reads from.
#[derive(Debug, Parser)]
#[command(
    name = "tidings",
    version,
    after_help = "Examples:\n  \
        tidings --exchange orders tail --count 5\n  \
        tidings --exchange orders publish --tag orders.placed '{\"id\": 7, \"item\": \"tea\"}'\n  \
        tidings --exchange orders dead-letters list --reason handler_failed\n  \
        tidings --exchange orders dead-letters replay --tag orders.placed --since 2024-05-01T00:00:00Z\n  \
        AMQP_URL='amqp://user:pass@mq:5672/%2f?exchange=orders' tidings events"
)]
pub(crate) struct Cli {
    /// The broker: amqp://user:password@host:port/vhost, or amqps:// for
    /// TLS; ?exchange=NAME picks the exchange.
    #[arg(long, global = true, env = "AMQP_URL", default_value = DEFAULT_URL, hide_env_values = true, display_order = 100)]
    pub(crate) url: String,

    /// The exchange to work on (overrides the URL's ?exchange=).
    #[arg(long, global = true, display_order = 101)]
    pub(crate) exchange: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// The broker and exchange the options name.
    pub(crate) fn broker(&self) -> tidings::Result<Broker> {
        Broker::new(&self.url, self.exchange.as_deref())
    }
}

/// What to do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print every message that crosses the exchange, as it comes, until
    /// Ctrl-C (or --count).
    ///
    /// Reads through a temporary queue of its own (deleted when it stops)
    /// bound with `#`, which takes everything from a topic or fanout
    /// exchange; on a direct exchange, name the routing keys with --bind.
    /// JSON bodies are pretty-printed; bincode bodies are shown by their tag
    /// and size.
    Tail(Tail),
    /// Publish one event, given as JSON, as a tidings bus would, and print
    /// its message id once the broker has confirmed it.
    ///
    /// The body is the event under its tag ({"TAG": <json>}, or
    /// {"TAG@vN": ..} for version N > 1) with content-type
    /// application/json, persistent, with the x-tidings-tag header, the
    /// schema fingerprint publishers stored for that tag and version (when
    /// there is one), and x-origin tidings-cli-<pid>. Fails when no queue
    /// is bound to the routing key.
    Publish(Publish),
    /// List, show, replay or purge the dead letters of the exchange (the
    /// queue <exchange>.dead-letter): what buses could not handle, with why.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// List the events of a contract: tag, version, schema fingerprint and
    /// fields, from a lock file or from what publishers stored on the
    /// broker (the stream <exchange>.schemas).
    Events(Events),
}

/// `tidings tail`.
#[derive(Debug, Args)]
pub(crate) struct Tail {
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// Bind this routing key or pattern instead of `#` (repeat for more;
    /// needed on a direct exchange).
    #[arg(long, value_name = "KEY")]
    pub(crate) bind: Vec<String>,
    /// Print one JSON object per message and line, for scripts.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `tidings publish`.
#[derive(Debug, Args)]
pub(crate) struct Publish {
    /// The event's tag, as in #[event(name = "..")].
    #[arg(long)]
    pub(crate) tag: String,
    /// The event's version, as in #[event(version = N)].
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) version: u32,
    /// The routing key (default: the tag, as the derive's default).
    #[arg(long, value_name = "KEY")]
    pub(crate) routing_key: Option<String>,
    /// The event's fields as JSON, such as '{"id": 7}'; `-` reads it from
    /// standard input.
    pub(crate) json: String,
}

/// `tidings dead-letters ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadLettersCommand {
    /// List the dead letters (oldest first) without taking them: message
    /// id, reason, tag, attempt, time, queue and error, one a line.
    List {
        #[command(flatten)]
        filter: Filter,
        /// List at most this many.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Print one JSON object per letter and line, bodies included.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full, by message id: why, where from, every
    /// header, and the body (JSON, or bincode read by the writer's stored
    /// schema).
    Show {
        /// The message id, as `list` prints it.
        message_id: String,
        /// Print it as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Send the matching dead letters back as new attempts, with their
    /// message id and origin, each removed only once the broker confirmed
    /// it. Those that cannot go back stay and are listed; the exit status
    /// is then 1.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Where to: `queue`, the queue each was consumed from (only that
        /// listener gets it again), or `exchange`, the exchange with the
        /// original routing key (every bound queue gets it again).
        #[arg(long, value_enum, default_value_t = ReplayTo::Queue)]
        to: ReplayTo,
    },
    /// Remove the matching dead letters for good (all, without filters).
    Purge {
        #[command(flatten)]
        filter: Filter,
        /// Really remove them (without it, purge only says how many it would).
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters a command takes; every option given must hold.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct Filter {
    /// Only those dead-lettered for this reason: handler_failed,
    /// unknown_tag, decode, too_large, ...
    #[arg(long)]
    pub(crate) reason: Option<String>,
    /// Only events of this tag.
    #[arg(long)]
    pub(crate) tag: Option<String>,
    /// Only events published at or after this time: RFC 3339
    /// (2024-05-01T12:00:00Z) or Unix seconds.
    #[arg(long, value_name = "TIME", value_parser = crate::time::parse)]
    pub(crate) since: Option<std::time::SystemTime>,
    /// Only events published before this time: RFC 3339 or Unix seconds.
    #[arg(long, value_name = "TIME", value_parser = crate::time::parse)]
    pub(crate) until: Option<std::time::SystemTime>,
    /// Only the message with this id.
    #[arg(long, value_name = "ID")]
    pub(crate) message_id: Option<String>,
}

/// Where `replay` sends letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReplayTo {
    /// The queue each letter was consumed from.
    Queue,
    /// The exchange, with each letter's original routing key.
    Exchange,
}

/// `tidings events`.
#[derive(Debug, Args)]
pub(crate) struct Events {
    /// Read this lock file (as written by tidings::Contract) instead of the
    /// broker's schema stream.
    #[arg(long, value_name = "FILE")]
    pub(crate) lock: Option<PathBuf>,
    /// Print the contract as JSON (the lock file's format).
    #[arg(long)]
    pub(crate) json: bool,
}
