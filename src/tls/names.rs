//! Which certificate answers a handshake: the one whose names include the name
//! the client asked for (SNI), exactly or by a wildcard (`*.example.com` for
//! `api.example.com`, one label deep, as RFC 6125 says); the first certificate
//! for a client that asks for none or for a name no certificate has, as
//! nginx's default server does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate and its key, with what was read of it.
pub(crate) struct Certified {
    pub(crate) key: Arc<CertifiedKey>,
    /// Its DNS names, lower case (wildcards as written: `*.example.com`).
    pub(crate) names: Vec<String>,
    /// Its names as written, IP addresses included, for the log.
    pub(crate) shown: Vec<String>,
    /// Its key's kind and its fingerprint, for the log (a renewal shows).
    pub(crate) about: String,
    pub(crate) file: PathBuf,
    /// When it expires, as the log says it.
    pub(crate) not_after: String,
    /// When it expires, in seconds since the epoch.
    pub(crate) expires_at: i64,
}

/// When a certificate expires, as `/metrics` and `/status` show it.
#[derive(Debug, Clone)]
pub(crate) struct Expiry {
    pub(crate) file: String,
    /// Its first name (a DNS name, or an address).
    pub(crate) name: String,
    /// Seconds since the epoch.
    pub(crate) expires_at: i64,
}

/// Certificates by name.
pub(crate) struct ByName {
    all: Vec<Certified>,
    exact: HashMap<String, usize>,
    /// By the part after `*.`.
    wildcard: HashMap<String, usize>,
}

impl std::fmt::Debug for ByName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ByName {
    /// `all` in order of preference: a name in two certificates is the first's.
    pub(crate) fn new(all: Vec<Certified>) -> ByName {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for (index, certified) in all.iter().enumerate() {
            for name in &certified.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(index),
                    None => exact.entry(name.clone()).or_insert(index),
                };
            }
        }
        ByName { all, exact, wildcard }
    }

    /// The certificate for `name` (from SNI), or the default.
    pub(crate) fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let index = name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        &self.all[index.copied().unwrap_or(0)].key
    }

    /// Each certificate, for the admin views: its file, its first name, its expiry.
    pub(crate) fn expiries(&self) -> Vec<Expiry> {
        (self.all.iter())
            .map(|certified| Expiry {
                file: certified.file.display().to_string(),
                name: certified.shown.first().cloned().unwrap_or_default(),
                expires_at: certified.expires_at,
            })
            .collect()
    }

    /// Each certificate: its file, its names, its key and fingerprint, its expiry.
    pub(crate) fn describe(&self) -> String {
        let each: Vec<String> = self
            .all
            .iter()
            .enumerate()
            .map(|(index, certified)| {
                let names = match certified.shown.is_empty() {
                    true => "no name".to_owned(),
                    false => certified.shown.join(", "),
                };
                let default = if index == 0 && self.all.len() > 1 {
                    ", the default"
                } else {
                    ""
                };
                format!(
                    "{} ({names}; {}; expires {}{default})",
                    certified.file.display(),
                    certified.about,
                    certified.not_after
                )
            })
            .collect();
        each.join("; ")
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.pick(hello.server_name())))
    }
}
