//! Flags and the config file → a validated [`Config`]. Nothing downstream
//! re-validates.
//!
//! Three layers, later ones win: the defaults, the TOML file (`--config`), the
//! flags actually given on the command line. One [`Settings`] struct is both the
//! flag set and the file schema, so every flag has a key of the same name
//! (`--graceful-timeout` ↔ `graceful_timeout`) and they cannot drift apart.
//!
//! - `settings.rs`  every setting, declared once: flag, variable, file key, help,
//!   type, default, checks
//! - `declare.rs`   the `settings!` macro: what each declaration makes
//! - `kinds.rs`     the settings that are a choice among a few (enums)
//! - `units.rs`     hosts, durations and sizes as users type them; serde adapters
//! - `flags.rs`     `ServerFlags` for a program's own command line; `Located`

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

mod declare;
mod flags;
mod kinds;
mod settings;
#[cfg(test)]
mod tests;
mod units;

pub(crate) use flags::OnlyServerFlags;
pub use flags::{Located, ServerFlags};
pub use kinds::{AccessLogFormat, Balance, ExecReady, LogFormat, StopSignal, TlsClientAuth};
pub use settings::Config;
use settings::Settings;
pub use units::parse_socket_addr;

/// A config file or value that cannot be used; the message names the key.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The serving sockets this config asks for.
    pub(crate) fn wanted_sockets(&self) -> crate::sys::listener::Wanted {
        crate::sys::listener::Wanted {
            addr: self.addr(),
            layout: self.balance.layout(),
            slots: self.workers.get(),
            backlog: self.backlog,
        }
    }

    /// Parses the process's arguments (the server's flags, nothing else) and
    /// reads `--config`. On a usage error or a bad config file prints the reason
    /// and exits 2, before anything is bound: call it only where that is what
    /// you want (a `main`). To embed the flags in your own command line, flatten
    /// [`ServerFlags`] into it and call [`Config::from_flags`].
    pub fn from_args() -> Config {
        let flags = OnlyServerFlags::try_parse()
            .unwrap_or_else(|err| ServerFlags::exit_on(err))
            .flags;
        Config::from_flags(flags).unwrap_or_else(|err| {
            // Not `eprintln!`, which panics on a closed stderr: exit 2 says it.
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("{}: {err}\n", program_name()));
            std::process::exit(2)
        })
    }

    /// Parses `args` (the first one is the program name) and reads `--config`.
    pub fn try_from_args<I, T>(args: I) -> Result<Config, Box<dyn std::error::Error>>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let flags = OnlyServerFlags::try_parse_from(args)?.flags;
        Ok(Config::from_flags(flags)?)
    }

    /// The config the flags (or their `PREFORK_*` variables) and their
    /// `--config` file describe. `PORT` and `WEB_CONCURRENCY`, as Heroku, Cloud
    /// Run, gunicorn and Puma read them, stand for `--port` and `--workers`
    /// where neither the flag nor its `PREFORK_` variable is given.
    pub fn from_flags(flags: ServerFlags) -> Result<Config, ConfigError> {
        let mut settings = flags.settings;
        if settings.port.is_none() {
            settings.port = from_env("PORT", |text| text.parse::<u16>().map_err(|err| err.to_string()))?;
        }
        if settings.workers.is_none() {
            settings.workers = from_env("WEB_CONCURRENCY", |text| match text.parse::<u16>() {
                Ok(workers @ 1..=4096) => Ok(workers),
                _ => Err("not a number of workers from 1 to 4096".into()),
            })?;
        }
        Config::load(flags.config, settings)?.with_tls()
    }

    /// The config for a reload (HUP): the file re-read, under the same
    /// command-line flags, with every setting the program set in code kept.
    /// The TLS files are read again too: a new certificate is applied by a HUP.
    pub fn reload(&self) -> Result<Config, ConfigError> {
        Config::load(self.file.clone(), self.flags.clone())?
            .keep_chosen(self)
            .with_tls()
    }

    /// `self` with the TLS files it names read and checked: a file that
    /// cannot be read, a key that is not its certificate's, an expired
    /// certificate is an error that names the file.
    pub(crate) fn with_tls(mut self) -> Result<Config, ConfigError> {
        settings::check_tls(&self)?;
        self.tls = crate::tls::Loaded::load(&self).map_err(ConfigError)?;
        Ok(self)
    }

    /// Whether the TLS files this config names are still to be read (a config
    /// built in code, or changed through a setter since), or its TLS settings
    /// still to be checked together.
    pub(crate) fn tls_unread(&self) -> bool {
        let read = match &self.tls {
            Some(loaded) => loaded.is_of(self),
            None => self.tls_cert.is_empty(),
        };
        !read || settings::check_tls(self).is_err()
    }

    /// The address to listen on: `host` and `port`.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The plain port beside the TLS one (`--plain-port`), on `host`.
    pub(crate) fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain_port.map(|port| SocketAddr::new(self.host, port))
    }

    /// Sets `host` and `port` as the program's own choice (see [`Config::set_host`]).
    pub fn set_addr(&mut self, addr: SocketAddr) -> &mut Config {
        self.set_host(addr.ip()).set_port(addr.port())
    }

    /// The config file a reload (HUP) re-reads; without one, a HUP re-applies
    /// this config as it is (and still replaces every worker).
    #[must_use]
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Makes a reload (HUP) read `file`, as `--config FILE` would.
    pub fn set_file(&mut self, file: Option<PathBuf>) -> &mut Config {
        self.file = file;
        self
    }

    fn load(file: Option<PathBuf>, flags: Settings) -> Result<Config, ConfigError> {
        // Flags were validated by the parser: a bad value here came from the file.
        let named = |err: ConfigError| match &file {
            Some(path) => ConfigError(format!("{}: {err}", path.display())),
            None => err,
        };
        Settings::layered(file.as_deref(), flags.clone())?
            .resolve(file.clone(), flags)
            .map_err(named)
    }
}

/// The environment variable `name`, parsed; an error names the variable.
fn from_env<T>(name: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<Option<T>, ConfigError> {
    let Some(text) = std::env::var_os(name) else {
        return Ok(None);
    };
    let text = text.to_string_lossy();
    parse(text.trim())
        .map(Some)
        .map_err(|why| ConfigError(format!("environment variable {name}='{text}': {why}")))
}

/// The name this program was started as, for messages.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| Some(Path::new(&arg0).file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "prefork-server".into())
}

impl Default for Config {
    fn default() -> Config {
        Settings::default()
            .resolve(None, Settings::default())
            .expect("the defaults are valid")
    }
}
