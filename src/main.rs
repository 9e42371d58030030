//! `prefork-server`: parse flags, run the master, map the outcome to an exit code
//! (0 clean stop, 1 runtime failure, 2 usage error: clap exits with it).

use std::process::ExitCode;

fn main() -> ExitCode {
    let config = prefork_server::Config::from_args();
    match prefork_server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("prefork-server: {err}");
            ExitCode::FAILURE
        }
    }
}
