//! `dcgguf` command line: parses arguments, calls the library, prints results. The
//! subcommands live in src/cli/, one file each; exit codes are listed at
//! [`cli::exit_code`] (0 ok, 1 I/O, 2 usage, 3 invalid input, 4 corrupt, 5 refused to
//! overwrite, 130/143 interrupted by SIGINT/SIGTERM with temporary files removed).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use cli::{Cli, exit_code};

/// On SIGINT/SIGTERM: remove this run's temporary files, then exit with 128 + the signal
/// (130, 143) like a shell. The library installs no handlers; the CLI does, on a thread.
fn remove_temp_files_on_signal() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    dcgguf::io::remove_live_temp_files();
                    std::process::exit(128 + sig);
                }
            });
        }
        Err(e) => eprintln!("dcgguf: warning: cannot handle SIGINT/SIGTERM: {e}"),
    }
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`dcgguf inspect f | head`), like other Unix tools, instead
    // of panicking in println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    remove_temp_files_on_signal();
    let cli = Cli::parse();
    if let Some(n) = cli.threads
        && n > dcgguf::io::max_threads()
    {
        eprintln!(
            "dcgguf: error: --threads {n}: at most {} on this machine (4 per CPU)",
            dcgguf::io::max_threads()
        );
        return ExitCode::from(2);
    }
    if let Some(n) = cli.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
    {
        eprintln!("dcgguf: cannot set {n} threads: {e}");
        return ExitCode::from(2);
    }
    match cli::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            if cli.json {
                println!("{}", json!({"error": e.to_string(), "exit_code": code}));
            }
            eprintln!("dcgguf: error: {e}");
            ExitCode::from(code)
        }
    }
}
