//! The `settings!` macro: from one declaration per setting, the flag set and
//! file schema ([`Settings`](super::settings::Settings), every field optional),
//! the validated [`Config`](super::Config) with a getter and a setter per
//! setting, the record of what a program set in code, and the resolution of a
//! layer into a `Config`.
//!
//! A `macro_rules!` table rather than a derive: a derive would need a
//! proc-macro crate of its own for one struct, and the table reads as the list
//! of settings it is.
//!
//! Each entry:
//!
//! ```text
//! /// Help text: the flag's, and the getter's doc.
//! #[arg(...)]            the flag (clap)
//! #[serde(...)]          optional: how the file spells the value (serde)
//! name, set_name: Given => Value = resolve;
//! ```
//!
//! `Given` is what a flag or the file holds; `Value` what the `Config` holds;
//! `resolve` turns an `Option<Given>` (unset in every layer: `None`) into a
//! `Value` or the reason it cannot, which is reported under the setting's name.

macro_rules! settings {
    (
        $(#[$config_meta:meta])*
        pub struct Config;
        $(
            $(#[doc = $doc:literal])*
            #[arg($($arg:tt)*)]
            $(#[serde($($serde:tt)*)])?
            $name:ident, $set:ident : $given:ty => $value:ty = $resolve:expr;
        )*
    ) => {
        /// One layer of settings, every field optional: both the flags and the
        /// file schema, so every flag has a file key of the same name.
        #[derive(Debug, Default, Clone, PartialEq, clap::Args, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct Settings {
            $(
                $(#[doc = $doc])*
                #[arg($($arg)*)]
                $(#[serde($($serde)*)])?
                pub(super) $name: Option<$given>,
            )*
        }

        impl Settings {
            /// `self` with every value `high` sets replaced.
            pub(super) fn overlay(self, high: Settings) -> Settings {
                Settings { $( $name: high.$name.or(self.$name) ),* }
            }

            /// Each setting resolved on its own (defaults filled, values checked).
            pub(super) fn resolve_each(self, file: Option<PathBuf>, flags: Settings) -> Result<Config, ConfigError> {
                Ok(Config {
                    $( $name: resolve(stringify!($name), self.$name, $resolve)?, )*
                    file,
                    flags,
                    chosen: Chosen::default(),
                    tls: None,
                })
            }
        }

        /// Which settings the program set in code (through a setter).
        #[derive(Debug, Default, Clone, Copy)]
        pub(super) struct Chosen {
            $( $name: bool, )*
        }

        $(#[$config_meta])*
        #[derive(Debug, Clone)]
        pub struct Config {
            $( pub(crate) $name: $value, )*
            /// The config file, re-read on HUP.
            pub(crate) file: Option<PathBuf>,
            /// The flags given on the command line: they override the file on every reload.
            pub(super) flags: Settings,
            /// What the program set in code: a reload keeps it over the file and the flags.
            pub(super) chosen: Chosen,
            /// The TLS files it names, read and checked (see `Config::with_tls`).
            pub(crate) tls: Option<std::sync::Arc<crate::tls::Loaded>>,
        }

        impl Config {
            $(
                $(#[doc = $doc])*
                #[must_use]
                #[allow(clippy::clone_on_copy)] // the same getter for every type
                pub fn $name(&self) -> $value {
                    self.$name.clone()
                }

                #[doc = concat!(
                    "Sets `", stringify!($name), "` (see [`Config::", stringify!($name), "`]) as the ",
                    "program's own choice: a reload (HUP) keeps it over the file and the flags."
                )]
                pub fn $set(&mut self, value: $value) -> &mut Config {
                    self.$name = value;
                    self.chosen.$name = true;
                    self
                }
            )*

            /// `self`, with every setting the program chose in `old` kept.
            pub(super) fn keep_chosen(mut self, old: &Config) -> Config {
                $(
                    if old.chosen.$name {
                        self.$name = old.$name.clone();
                        self.chosen.$name = true;
                    }
                )*
                self
            }
        }
    };
}

pub(super) use settings;

/// `resolve(given)`, its error under the setting's name (`workers: must be at least 1`).
pub(super) fn resolve<G, V>(
    name: &str,
    given: Option<G>,
    resolve: impl FnOnce(Option<G>) -> Result<V, String>,
) -> Result<V, super::ConfigError> {
    resolve(given).map_err(|why| super::ConfigError(format!("{name}: {why}")))
}
