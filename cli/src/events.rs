//! `tidings events`: the events of a contract.

use std::process::ExitCode;

use tidings::{Contract, Error, ErrorKind};

use crate::args::{Cli, Events};

pub(crate) async fn run(cli: &Cli, events: &Events) -> tidings::Result<ExitCode> {
    let (contract, source) = match &events.lock {
        Some(path) => (Contract::read(path)?, format!("{}", path.display())),
        None => {
            let broker = cli.broker()?;
            let contract = Contract::from_broker(&broker.props)
                .await
                .map_err(|e| broker.explain(e))?;
            let source = format!("the schema stream of exchange {:?}", broker.exchange());
            (contract, source)
        }
    };
    if events.json {
        let json = serde_json::to_string_pretty(&contract).map_err(|e| {
            Error::with_source(ErrorKind::Encode, format!("encoding the contract: {e}"), e)
        })?;
        println!("{json}");
    } else {
        println!(
            "{:<40} {:>7}  {:<16}  fields",
            "tag", "version", "fingerprint"
        );
        for schema in contract.events() {
            let fields = schema.fields().join(", ");
            let fields = if schema.is_traced() {
                fields
            } else {
                format!(
                    "(untraced: {})",
                    schema.untraced_reason().unwrap_or("no format")
                )
            };
            println!(
                "{:<40} {:>7}  {:<16}  {fields}",
                schema.tag(),
                schema.version(),
                schema.fingerprint().to_string()
            );
        }
    }
    eprintln!("tidings: {} events in {source}", contract.events().len());
    Ok(ExitCode::SUCCESS)
}
