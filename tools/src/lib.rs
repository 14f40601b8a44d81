//! `tessera-tools`: the `tessera` command-line client. One-shot commands
//! (`tessera get KEY`) and an interactive shell with history when run
//! without a command. It talks to the server through `tessera-client` and
//! duplicates no server or engine logic.

pub mod backup;
pub mod cert;
pub mod cli;
