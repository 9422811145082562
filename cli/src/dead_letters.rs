//! `tidings dead-letters`: list, show, replay and purge.

use std::process::ExitCode;

use tidings::{DeadLetterFilter, DeadLetterMessage, DeadLetters, Progress};

use crate::args::{DeadLettersCommand, Filter, ReplayTo};
use crate::broker::Broker;
use crate::print::Shown;

/// Progress is printed every this many letters.
const PROGRESS_EVERY: u64 = 1000;

pub(crate) async fn run(
    broker: &Broker,
    command: &DeadLettersCommand,
) -> tidings::Result<ExitCode> {
    let dead_letters = DeadLetters::open(&broker.props)
        .await
        .map_err(|e| broker.explain(e))?
        .with_progress(print_progress);
    let done = match command {
        DeadLettersCommand::List {
            filter,
            limit,
            json,
        } => {
            let mut filter = to_filter(filter);
            if let Some(limit) = limit {
                filter = filter.limit(*limit);
            }
            list(&dead_letters, &filter, *json).await
        }
        DeadLettersCommand::Show { message_id, json } => {
            show(&dead_letters, message_id, *json).await
        }
        DeadLettersCommand::Replay { filter, to } => {
            replay(&dead_letters, &to_filter(filter), *to).await
        }
        DeadLettersCommand::Purge { filter, yes } => {
            purge(&dead_letters, &to_filter(filter), *yes).await
        }
    };
    let _ = dead_letters.close().await;
    done
}

async fn list(
    dead_letters: &DeadLetters,
    filter: &DeadLetterFilter,
    json: bool,
) -> tidings::Result<ExitCode> {
    let letters = dead_letters.list(filter).await?;
    for letter in &letters {
        if json {
            println!("{}", shown(letter).json());
        } else {
            println!("{}", line(letter));
        }
    }
    eprintln!(
        "tidings: {} dead letters listed from {:?}",
        letters.len(),
        dead_letters.queue()
    );
    Ok(ExitCode::SUCCESS)
}

async fn show(
    dead_letters: &DeadLetters,
    message_id: &str,
    json: bool,
) -> tidings::Result<ExitCode> {
    let Some(letter) = dead_letters.find(message_id).await? else {
        eprintln!(
            "tidings: no dead letter with message id {message_id:?} in {:?}; `tidings dead-letters list` shows the ids",
            dead_letters.queue()
        );
        return Ok(ExitCode::FAILURE);
    };
    if json {
        println!("{}", shown(&letter).json());
    } else {
        print!("{}", shown(&letter).text());
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(
    dead_letters: &DeadLetters,
    filter: &DeadLetterFilter,
    to: ReplayTo,
) -> tidings::Result<ExitCode> {
    let to = match to {
        ReplayTo::Queue => tidings::ReplayTo::Queue,
        ReplayTo::Exchange => tidings::ReplayTo::Exchange,
    };
    let report = dead_letters.replay(to, filter).await?;
    for failure in &report.failed {
        eprintln!(
            "tidings: not replayed: {}: {}",
            failure.message_id.as_deref().unwrap_or("(no message id)"),
            failure.why
        );
    }
    eprintln!(
        "tidings: replayed {}, left {} not matching, {} failed (still in {:?})",
        report.replayed,
        report.not_matching,
        report.failed.len(),
        dead_letters.queue()
    );
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn purge(
    dead_letters: &DeadLetters,
    filter: &DeadLetterFilter,
    yes: bool,
) -> tidings::Result<ExitCode> {
    if !yes {
        let matching = if filter.is_everything() {
            dead_letters.count().await?
        } else {
            dead_letters.list(filter).await?.len() as u64
        };
        eprintln!(
            "tidings: purge would remove {matching} dead letters from {:?} for good; run it again with --yes to remove them",
            dead_letters.queue()
        );
        return Ok(ExitCode::FAILURE);
    }
    let purged = dead_letters.purge(filter).await?;
    eprintln!(
        "tidings: purged {purged} dead letters from {:?}",
        dead_letters.queue()
    );
    Ok(ExitCode::SUCCESS)
}

fn to_filter(filter: &Filter) -> DeadLetterFilter {
    let mut out = DeadLetterFilter::new();
    if let Some(reason) = &filter.reason {
        out = out.reason(reason);
    }
    if let Some(tag) = &filter.tag {
        out = out.tag(tag);
    }
    if let Some(since) = filter.since {
        out = out.since(since);
    }
    if let Some(until) = filter.until {
        out = out.until(until);
    }
    if let Some(id) = &filter.message_id {
        out = out.message_id(id);
    }
    out
}

fn print_progress(progress: &Progress) {
    let last = progress.examined == progress.total;
    if progress.total >= PROGRESS_EVERY
        && (progress.examined.is_multiple_of(PROGRESS_EVERY) || last)
    {
        eprintln!(
            "tidings: {} of {} dead letters examined, {} taken",
            progress.examined, progress.total, progress.taken
        );
    }
}

/// One line: id, reason, tag, attempt, time, queue, error.
fn line(letter: &DeadLetterMessage) -> String {
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let error = letter.error().unwrap_or("").replace('\n', " ");
    let error: String = if error.chars().count() > 100 {
        error.chars().take(99).chain(['…']).collect()
    } else {
        error
    };
    format!(
        "{}  {}  {}  attempt {}  {}  {}  {}",
        or_dash(letter.message_id()),
        or_dash(letter.reason()),
        or_dash(letter.tag()),
        letter
            .attempt()
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        letter
            .timestamp()
            .map_or_else(|| "-".to_owned(), crate::time::show),
        or_dash(letter.queue()),
        error
    )
}

fn shown(letter: &DeadLetterMessage) -> Shown {
    let mut extra = vec![
        ("reason", letter.reason().unwrap_or("-").to_owned()),
        ("error", letter.error().unwrap_or("-").to_owned()),
        (
            "attempt",
            letter
                .attempt()
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ),
        ("queue", letter.queue().unwrap_or("-").to_owned()),
    ];
    if letter.body_dropped() {
        extra.push(("body dropped", "yes: it cannot be replayed".to_owned()));
    }
    Shown {
        tag: letter.tag().map(str::to_owned),
        version: letter.version(),
        routing_key: letter.routing_key().map(str::to_owned),
        message_id: letter.message_id().map(str::to_owned),
        origin: letter.origin().map(str::to_owned),
        timestamp: letter.timestamp(),
        content_type: letter.content_type().map(str::to_owned),
        headers: letter.headers(),
        size: letter.body_size(),
        body: letter.json().cloned(),
        note: letter.body_note().map(str::to_owned),
        extra,
    }
}
