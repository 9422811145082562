//! **The `tidings` command**: watch what crosses an exchange, publish an
//! event as a bus would, inspect and replay dead letters, and list the
//! event contracts publishers stored. Run `tidings --help`.

mod args;
mod broker;
mod dead_letters;
mod events;
mod print;
mod publish;
mod tail;
mod time;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = async {
        match &cli.command {
            Command::Tail(tail) => tail::run(&cli.broker()?, tail).await,
            Command::Publish(publish) => publish::run(&cli.broker()?, publish).await,
            Command::DeadLetters(command) => dead_letters::run(&cli.broker()?, command).await,
            Command::Events(events) => events::run(&cli, events).await,
        }
    };
    match run.await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tidings: {e}");
            ExitCode::FAILURE
        }
    }
}
