//! The server's flags as a program embeds them ([`ServerFlags`]), and where a
//! control command finds a running server ([`Located`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser};

use super::settings::Settings;
use super::ConfigError;

/// The server's flags, to flatten into a program's own command line
/// (`#[command(flatten)] server: prefork_server::ServerFlags`), then
/// [`Config::from_flags`](super::Config::from_flags).
#[derive(Debug, Clone, Args)]
pub struct ServerFlags {
    /// TOML file with any of the settings below (same names, with `_` for `-`);
    /// flags given on the command line override it. Re-read on HUP.
    #[arg(long, env = "PREFORK_CONFIG", value_name = "FILE")]
    pub(super) config: Option<PathBuf>,

    #[command(flatten)]
    pub(super) settings: Settings,
}

/// Where a running server can be reached, as its settings say: what a control
/// command (`prefork-server reload`, `status`) needs, and nothing else.
#[derive(Debug, Clone, Default)]
pub struct Located {
    /// Where the running master wrote its pid (`pid_file`).
    pub pid_file: Option<PathBuf>,
    /// Its admin listener (`admin`).
    pub admin: Option<SocketAddr>,
    /// The config file these came from, if any.
    pub file: Option<PathBuf>,
}

impl ServerFlags {
    /// Reads `file` as the config file, as `--config FILE` would.
    pub fn set_config_file(&mut self, file: PathBuf) {
        self.config = Some(file);
    }

    /// `pid_file` and `admin` from these flags (and their `PREFORK_*`
    /// variables) over the config file, without judging the other settings:
    /// a control command must not refuse what the running server accepted
    /// (an `admin` on all interfaces with `--admin-allow-remote`, say).
    pub fn locate(&self) -> Result<Located, ConfigError> {
        let settings = Settings::layered(self.config.as_deref(), self.settings.clone())?;
        Ok(Located {
            pid_file: settings.pid_file,
            admin: settings.admin,
            file: self.config.clone(),
        })
    }

    /// The TLS files these flags (and their variables and config file) name,
    /// read and checked as a reload would: `Err` with the reason when a HUP
    /// would be refused for them (a renewal half done: a new certificate, the
    /// old key). Settings that cannot be resolved here are not judged: the
    /// running server may have been given flags this command was not.
    pub fn check_tls_files(&self) -> Result<(), ConfigError> {
        match super::Config::load(self.config.clone(), self.settings.clone()) {
            Ok(config) => config.with_tls().map(drop),
            Err(_) => Ok(()),
        }
    }

    /// Prints a usage error from parsing a command line that holds these flags,
    /// followed, for a value that came from a `PREFORK_*` variable rather than
    /// the command line (clap names only the flag), by a line that says so; then
    /// exits with clap's code (2).
    pub fn exit_on(err: clap::Error) -> ! {
        let note = ServerFlags::environment_note(&err);
        let _ = err.print();
        if let Some(note) = note {
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("{note}\n"));
        }
        std::process::exit(err.exit_code())
    }

    fn environment_note(err: &clap::Error) -> Option<String> {
        let arg = err.get(clap::error::ContextKind::InvalidArg)?.to_string();
        let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
        let variable = format!("PREFORK_{}", long.replace('-', "_").to_uppercase());
        let on_command_line =
            std::env::args().any(|given| given == format!("--{long}") || given.starts_with(&format!("--{long}=")));
        (!on_command_line && std::env::var_os(&variable).is_some())
            .then(|| format!("note: the value came from the environment variable {variable}"))
    }
}

/// A command line with the server's flags and nothing else (`Config::from_args`).
#[derive(Debug, Parser)]
#[command(version, after_help = crate::sys::signals::HELP_TABLE)]
pub(crate) struct OnlyServerFlags {
    #[command(flatten)]
    pub(super) flags: ServerFlags,
}
