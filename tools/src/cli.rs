//! Commands of the `tessera` CLI and how their results print: readable by
//! default, one JSON object per command with `--json`.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use serde_json::json;
use tessera_client::Client;

#[derive(Debug, Parser)]
#[command(name = "tessera", version, about = "Command-line client for Tessera")]
pub struct Cli {
    /// Server address (any shard's port or the shared port).
    #[arg(long, global = true, default_value = "127.0.0.1:7878")]
    pub addr: String,
    /// Print one JSON object per command.
    #[arg(long, global = true)]
    pub json: bool,
    /// Request timeout in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand, Clone)]
pub enum Command {
    /// Print the value of KEY.
    Get { key: String },
    /// Store VALUE under KEY.
    Put { key: String, value: String },
    /// Delete KEY.
    Del { key: String },
    /// List keys from START (inclusive) to --end (exclusive).
    Scan {
        #[arg(default_value = "")]
        start: String,
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Per-shard figures (the same as /metrics).
    Stats,
    /// Check the server answers.
    Ping,
}

/// Bytes as text: printable ASCII as is, everything else escaped.
pub fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// Runs one command; returns the text to print.
pub fn execute(
    client: &mut Client,
    command: &Command,
    as_json: bool,
) -> tessera_client::Result<String> {
    let text = match command {
        Command::Get { key } => {
            let value = client.get(Bytes::from(key.clone()))?;
            if as_json {
                json!({"key": key, "found": value.is_some(), "value": value.as_deref().map(show)})
                    .to_string()
            } else {
                value
                    .as_deref()
                    .map(show)
                    .unwrap_or_else(|| "(not found)".into())
            }
        }
        Command::Put { key, value } => {
            let ts = client.put(key.clone(), value.clone())?;
            if as_json {
                json!({"key": key, "ts": ts}).to_string()
            } else {
                format!("OK (ts {ts})")
            }
        }
        Command::Del { key } => {
            let ts = client.delete(key.clone())?;
            if as_json {
                json!({"key": key, "ts": ts}).to_string()
            } else {
                format!("OK (ts {ts})")
            }
        }
        Command::Scan { start, end, limit } => {
            let page = client.scan(start.clone(), end.clone(), *limit)?;
            if as_json {
                let rows: Vec<_> = page
                    .rows
                    .iter()
                    .map(|(k, v)| json!({"key": show(k), "value": show(v)}))
                    .collect();
                json!({"rows": rows, "next_start": page.next_start.as_deref().map(show)})
                    .to_string()
            } else {
                let mut out: Vec<String> = page
                    .rows
                    .iter()
                    .map(|(k, v)| format!("{}\t{}", show(k), show(v)))
                    .collect();
                out.push(match &page.next_start {
                    Some(next) => format!("({} rows; more from {})", page.rows.len(), show(next)),
                    None => format!("({} rows)", page.rows.len()),
                });
                out.join("\n")
            }
        }
        Command::Stats => {
            let metrics = client.stats()?;
            if as_json {
                let all: Vec<_> = metrics
                    .iter()
                    .map(|m| json!({"shard": m.shard, "name": m.name, "value": m.value}))
                    .collect();
                json!({"metrics": all}).to_string()
            } else {
                let width = metrics.iter().map(|m| m.name.len()).max().unwrap_or(0);
                metrics
                    .iter()
                    .map(|m| format!("shard {:<3} {:<width$} {}", m.shard, m.name, m.value))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Command::Ping => {
            client.ping()?;
            if as_json {
                json!({"pong": true}).to_string()
            } else {
                "PONG".into()
            }
        }
    };
    Ok(text)
}
