//! `prefork-server`: parse flags, run the master (or a control command), map the
//! outcome to an exit code (0 clean stop, 1 runtime failure, 2 usage error: clap
//! exits with it).

mod ctl;

/// The system's malloc, without its slow path for tokio's 128-byte-aligned
/// tasks (one per connection and per HTTP/2 stream), and with a few of
/// hyper's 8 KiB buffers kept for reuse: see src/alloc/.
#[global_allocator]
static ALLOCATOR: prefork_server::Allocator = prefork_server::Allocator;

use std::process::ExitCode;

use clap::Parser;

/// prefork-server: a master process forks one HTTP worker per core; the workers
/// accept on sockets the master owns, and the master respawns any worker that dies.
#[derive(Debug, Parser)]
#[command(
    name = "prefork-server",
    version,
    after_help = prefork_server::SIGNALS_HELP,
    override_usage = "prefork-server [OPTIONS]                          serve the default app\n       \
                      prefork-server [OPTIONS] -- PROGRAM [ARGS]...     run PROGRAM in every slot (exec mode)\n       \
                      prefork-server <COMMAND> [OPTIONS]                act on a running server (see Commands)"
)]
struct Cli {
    #[command(flatten)]
    server: prefork_server::ServerFlags,

    /// Act on a running server instead of starting one (like `nginx -s`)
    #[command(subcommand)]
    command: Option<ctl::Command>,
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|err| prefork_server::ServerFlags::exit_on(err));
    if let Some(command) = cli.command {
        return ctl::run(command, cli.server);
    }
    let config = match prefork_server::Config::from_flags(cli.server) {
        Ok(config) => config,
        Err(err) => {
            say_error(&err);
            return ExitCode::from(2);
        }
    };
    match prefork_server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            say_error(&err);
            ExitCode::FAILURE
        }
    }
}

/// The reason the server did not run, on stderr; a closed stderr is no reason
/// to panic (the exit code still says it).
fn say_error(err: &dyn std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "prefork-server: {err}");
}
