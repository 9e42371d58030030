//! TLS on the serving port (`--tls-cert`, `--tls-key`): the certificates and
//! keys read and checked where the config is (so a bad file is a usage error
//! at the start and a refused reload on HUP), and what every worker builds its
//! rustls configuration from after the fork.
//!
//! - `files.rs`   reading the PEM files and checking them: a key that is not
//!   its certificate's, an expired certificate, a file that holds nothing
//! - `names.rs`   which certificate answers which name the client asks for (SNI)
//! - `tickets.rs` session tickets sealed with the keys the master shares with
//!   every worker, so a client resumes on whichever worker it reaches

mod files;
mod names;
mod tickets;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;

use crate::config::{Config, TlsClientAuth};
pub(crate) use files::TICKET_KEY_LEN;
pub(crate) use names::Expiry;
pub(crate) use tickets::SharedTickets;

/// The files a [`Loaded`] was read from: a config that names others needs a
/// new one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sources {
    certs: Vec<PathBuf>,
    keys: Vec<PathBuf>,
    client_ca: Option<PathBuf>,
    client_auth: Option<TlsClientAuth>,
    ticket_keys: Vec<PathBuf>,
}

impl Sources {
    fn of(config: &Config) -> Sources {
        Sources {
            certs: config.tls_cert.clone(),
            keys: config.tls_key.clone(),
            client_ca: config.tls_client_ca.clone(),
            client_auth: config.tls_client_auth,
            ticket_keys: config.tls_ticket_key.clone(),
        }
    }
}

/// The TLS material of a config, read and checked: certificates with their
/// keys, by name; the client-certificate verifier; the ticket keys from files.
pub(crate) struct Loaded {
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) certificates: Arc<names::ByName>,
    /// `--tls-client-ca`: verifies the certificate a client shows.
    pub(crate) client: Option<Arc<dyn ClientCertVerifier>>,
    /// `--tls-ticket-key`: the keys, first the one that seals.
    pub(crate) ticket_keys: Vec<[u8; TICKET_KEY_LEN]>,
    sources: Sources,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.debug_struct("Loaded")
            .field("certificates", &self.sources.certs)
            .field("client_ca", &self.sources.client_ca)
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// Reads and checks what `config` names; `None` without `--tls-cert`.
    pub(crate) fn load(config: &Config) -> Result<Option<Arc<Loaded>>, String> {
        if config.tls_cert.is_empty() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut certificates = Vec::new();
        for (cert, key) in config.tls_cert.iter().zip(&config.tls_key) {
            certificates.push(files::certified(&provider, cert, key)?);
        }
        let client = match &config.tls_client_ca {
            None => None,
            Some(path) => Some(files::client_verifier(
                &provider,
                path,
                config.tls_client_auth.unwrap_or(TlsClientAuth::Required),
            )?),
        };
        let ticket_keys = config
            .tls_ticket_key
            .iter()
            .map(|path| files::ticket_key(path))
            .collect::<Result<_, _>>()?;
        Ok(Some(Arc::new(Loaded {
            provider,
            certificates: Arc::new(names::ByName::new(certificates)),
            client,
            ticket_keys,
            sources: Sources::of(config),
        })))
    }

    /// Whether this was read from the files `config` names.
    pub(crate) fn is_of(&self, config: &Config) -> bool {
        self.sources == Sources::of(config)
    }

    /// When each certificate expires (the admin views).
    pub(crate) fn expiries(&self) -> Vec<names::Expiry> {
        self.certificates.expiries()
    }

    /// What the log says of it: each certificate's names and when it expires.
    pub(crate) fn describe(&self) -> String {
        let mut text = self.certificates.describe();
        if let Some(ca) = &self.sources.client_ca {
            let auth = match self.sources.client_auth {
                Some(TlsClientAuth::Optional) => "optional",
                _ => "required",
            };
            text.push_str(&format!("; client certificates from {} ({auth})", ca.display()));
        }
        text
    }
}

/// What a service finds in the extensions of each request that came over TLS
/// (`request.extensions().get::<TlsInfo>()`): the name the client asked for,
/// the protocol ALPN chose, and the client's certificate chain once verified
/// (`--tls-client-ca`), its own certificate first.
///
/// ```no_run
/// # fn handler(request: hyper::Request<prefork_server::RequestBody>) {
/// if let Some(tls) = request.extensions().get::<prefork_server::TlsInfo>() {
///     let verified = tls.client_certificates().is_some();
///     # let _ = verified;
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub(crate) inner: Arc<Negotiated>,
}

#[derive(Debug)]
pub(crate) struct Negotiated {
    pub(crate) server_name: Option<String>,
    pub(crate) alpn: Option<Vec<u8>>,
    /// ALPN chose HTTP/2.
    pub(crate) h2: bool,
    pub(crate) version: Option<rustls::ProtocolVersion>,
    pub(crate) resumed: bool,
    pub(crate) client_certificates: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

impl TlsInfo {
    /// ALPN chose HTTP/2.
    pub(crate) fn is_h2(&self) -> bool {
        self.inner.h2
    }

    /// The server name the client sent (SNI), if any.
    #[must_use]
    pub fn server_name(&self) -> Option<&str> {
        self.inner.server_name.as_deref()
    }

    /// The protocol ALPN settled on (`h2`, `http/1.1`), if the client offered any.
    #[must_use]
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.inner.alpn.as_deref()
    }

    /// `TLSv1.3` or `TLSv1.2`.
    #[must_use]
    pub fn version(&self) -> Option<&'static str> {
        match self.inner.version? {
            rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
            rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
            _ => None,
        }
    }

    /// Whether the handshake resumed an earlier session (a ticket).
    #[must_use]
    pub fn resumed(&self) -> bool {
        self.inner.resumed
    }

    /// The client's certificate chain (DER), its own first, as verified against
    /// `--tls-client-ca`; `None` if it showed none.
    #[must_use]
    pub fn client_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.inner.client_certificates.as_deref()
    }
}
