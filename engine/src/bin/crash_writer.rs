//! Child process of the crash test (`engine/tests/crash.rs`):
//! opens the engine in `argv[1]` with `always` sync, runs many concurrent
//! writers with the key prefix `argv[2]`, and prints `key` on stdout after
//! each write is acknowledged, until it is killed.

use std::io::Write;
use tessera_engine::{run_local, Engine, Options};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(prefix)) = (args.next(), args.next()) else {
        eprintln!("usage: crash_writer <dir> <prefix>");
        std::process::exit(2);
    };
    run_local(move || async move {
        let opts = Options {
            memtable_bytes_max: 256 << 10,
            table_target_bytes: 256 << 10,
            level_base_bytes: 1 << 20,
            ..Options::default()
        };
        let engine = match Engine::open(&dir, opts).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        println!("ready");
        let mut tasks = Vec::new();
        for w in 0..32 {
            let engine = engine.clone();
            let prefix = prefix.clone();
            tasks.push(glommio::spawn_local(async move {
                for seq in 0u64.. {
                    let key = format!("{prefix}-{w:02}-{seq:08}");
                    let value = format!("{key}:{}", "v".repeat((seq % 200) as usize));
                    if let Err(e) = engine.put(key.clone(), value).await {
                        eprintln!("error: {e}");
                        std::process::exit(1);
                    }
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{key}");
                    let _ = out.flush();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    });
}
