//! `tessera`: run one command, or an interactive shell without one.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use rustyline::error::ReadlineError;
use std::io::Write;
use std::time::Duration;
use tessera_client::{Client, ConnectOptions, TlsOptions};
use tessera_tools::backup;
use tessera_tools::cli::{cert, execute, get_raw, report, Cli, Command, EXIT_NO};

const SHELL_HELP: &str = "commands: get KEY [--at TS] | ttl KEY | put KEY VALUE [--ttl 30s] | put KEY --value-file PATH | del KEY | scan [START] [--end END] [--limit N] [--at TS] [--keys-only] | txn [--exists K] [--missing K] [--equals K=V] [--version K=TS] [--read K] [--put K=V] [--del K] [--retry] | stats | backup FILE | verify FILE | cert DIR [--host H] | restore FILE [--merge] | ping | help | quit
quote arguments with spaces: put greeting \"hello world\"";

fn main() {
    let cli = Cli::parse();
    // The commands that need no server.
    let offline = match &cli.command {
        Some(Command::Verify { file }) => Some(
            backup::verify(file)
                .map(|summary| report("verify", file, &summary, cli.json))
                .map_err(|e| e.to_string()),
        ),
        Some(Command::Cert { dir, hosts, days }) => {
            Some(cert(dir, hosts, *days, cli.json).map_err(|e| e.to_string()))
        }
        _ => None,
    };
    if let Some(result) = offline {
        match result {
            Ok(text) => {
                print_line(&text);
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let options = ConnectOptions {
        timeout: Duration::from_millis(cli.timeout_ms),
        client_name: "tessera-cli".into(),
        ..ConnectOptions::default()
    };
    let mut options = match options.token_from(cli.token_file.as_deref()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: --token-file: {e}");
            std::process::exit(1);
        }
    };
    let tls_ca = cli
        .tls_ca
        .clone()
        .or_else(|| std::env::var_os("TESSERA_TLS_CA").map(Into::into));
    if let Some(ca) = tls_ca {
        match TlsOptions::from_ca_file(&ca) {
            Ok(mut tls) => {
                tls.server_name = cli.tls_server_name.clone().or_else(|| host_of(&cli.addr));
                options.tls = Some(tls);
            }
            Err(e) => {
                eprintln!("error: --tls-ca: {e}");
                std::process::exit(1);
            }
        }
    }
    let mut client = match Client::connect_with(cli.addr.as_str(), &options) {
        Ok(c) => c,
        Err(e) => {
            // A TLS server closes a connection that does not start with a
            // handshake.
            let hint = match (&e, &options.tls) {
                (tessera_client::Error::Io(io), None)
                    if io.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    " (if the server uses TLS, give --tls-ca)"
                }
                _ => "",
            };
            eprintln!("error: cannot connect to {}: {e}{hint}", cli.addr);
            std::process::exit(1);
        }
    };
    match &cli.command {
        Some(Command::Get { key, at, raw: true }) if !cli.json => {
            match get_raw(&mut client, key, *at) {
                Ok(Some(value)) => {
                    write_out(&value);
                }
                Ok(None) => std::process::exit(EXIT_NO),
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some(command) => match execute(&mut client, command, cli.json) {
            Ok(answer) => {
                print_line(&answer.text);
                if answer.no {
                    std::process::exit(EXIT_NO);
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                // As clap exits on the arguments it checks itself.
                let usage = matches!(e, tessera_tools::cli::CliError::Usage(_));
                std::process::exit(if usage { 2 } else { 1 });
            }
        },
        None => shell(&cli, &mut client),
    }
}

/// Writes `bytes` to standard output; false once its reader has gone
/// (`tessera scan | head`), which ends the output but is no error: the
/// command keeps its exit status. (`println!` panicked there.) Any other
/// failure, such as a full disk under a redirect, exits 1 with one line.
fn write_out(bytes: &[u8]) -> bool {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
        Err(e) => {
            eprintln!("error: writing the output: {e}");
            std::process::exit(1);
        }
    }
}

/// [`write_out`] of `text` and a newline.
fn print_line(text: &str) -> bool {
    write_out(format!("{text}\n").as_bytes())
}

/// The host of `HOST:PORT` (`[::1]:7878` gives `::1`).
fn host_of(addr: &str) -> Option<String> {
    let (host, _port) = addr.rsplit_once(':')?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// A shell line's parse error up to clap's usage block: the message and
/// what it lists ("the following required arguments were not provided:"
/// is followed by the arguments), without the usage text that follows.
fn usage_error(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .collect();
    message.join("\n")
}

fn shell(cli: &Cli, client: &mut Client) {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the shell: {e}");
            std::process::exit(1);
        }
    };
    let history =
        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".tessera_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let prompt = format!("tessera {}> ", cli.addr);
    loop {
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        match line {
            "quit" | "exit" => break,
            "help" | "?" => {
                if !print_line(SHELL_HELP) {
                    break;
                }
                continue;
            }
            _ => {}
        }
        let Some(words) = shlex::split(line) else {
            if !print_line("error: unbalanced quotes") {
                break;
            }
            continue;
        };
        let line_args = std::iter::once("tessera".to_string()).chain(words);
        let parsed = Cli::command()
            .try_get_matches_from(line_args)
            .and_then(|matches| {
                // The connection is the shell's: options that shape it
                // would be ignored on a line, so they are refused there.
                let fixed = [
                    "addr",
                    "timeout_ms",
                    "token_file",
                    "tls_ca",
                    "tls_server_name",
                ]
                .into_iter()
                .find(|id| matches.value_source(id) == Some(ValueSource::CommandLine));
                match fixed {
                    Some(id) => Err(Cli::command().error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!(
                            "--{} applies to the whole shell: start it with `tessera --{} ...`",
                            id.replace('_', "-"),
                            id.replace('_', "-")
                        ),
                    )),
                    None => Cli::from_arg_matches(&matches),
                }
            });
        let text = match parsed {
            Ok(Cli {
                command: Some(command),
                json,
                ..
            }) => match execute(client, &command, json || cli.json) {
                Ok(answer) => answer.text,
                Err(e) => format!("error: {e}"),
            },
            Ok(_) => SHELL_HELP.to_string(),
            Err(e) => usage_error(&e),
        };
        if !print_line(&text) {
            break;
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
}
