//! The PEM files: certificate chains, their keys, the client CAs and the
//! ticket-key files, each read and checked, every error naming its file and
//! saying what is wrong with it.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;

use super::names::Certified;
use crate::config::TlsClientAuth;

/// A ticket key: its name (16 bytes, sent in every ticket so the right key is
/// found) and the AES-256-GCM key (32 bytes).
pub(crate) const TICKET_KEY_LEN: usize = 48;

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|err| format!("cannot read the {what} {}: {err}", path.display()))
}

/// A certificate chain and its key: parsed, matched, in date, and its names.
pub(super) fn certified(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<Certified, String> {
    let chain = chain(cert, "certificate (--tls-cert)")?;
    let pem = read(key, "key (--tls-key)")?;
    if pem.windows(24).any(|w| w == b"-----BEGIN ENCRYPTED PRI") {
        return Err(format!(
            "{}: the private key is encrypted (a passphrase would have to be typed at every start and reload); \
             decrypt it to a file only the server can read: openssl pkey -in {} -out server.key",
            key.display(),
            key.display()
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|err| {
        format!(
            "{}: no private key in it ({err}; a PEM file with -----BEGIN PRIVATE KEY-----, EC PRIVATE KEY or RSA PRIVATE KEY)",
            key.display()
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|err| format!("{}: cannot use this key: {err}", key.display()))?;
    let certified = CertifiedKey::new(chain, Arc::clone(&signing));
    match certified.keys_match() {
        Ok(()) => {}
        // A key type whose public half rustls cannot derive: nothing to compare.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            // The key of a later certificate in the file: the order is wrong.
            let later = certified.cert.iter().skip(1).position(|other| {
                CertifiedKey::new(vec![other.clone()], Arc::clone(&signing))
                    .keys_match()
                    .is_ok()
            });
            return Err(match later {
                Some(index) => format!(
                    "{} is the key of certificate {} in {}, not of the first: the server's own certificate comes first in the file, then the intermediates",
                    key.display(),
                    index + 2,
                    cert.display()
                ),
                None => format!(
                    "{} is not the key of the certificate {} (its public key is another's)",
                    key.display(),
                    cert.display()
                ),
            });
        }
    }
    let end_entity = certified
        .end_entity_cert()
        .map_err(|err| format!("{}: {err}", cert.display()))?;
    let parsed = Parsed::of(end_entity, cert)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    if parsed.not_after < now {
        return Err(format!(
            "{}: the certificate expired on {}",
            cert.display(),
            parsed.not_after_text
        ));
    }
    let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity);
    let fingerprint: String = fingerprint.as_ref()[..8]
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect();
    Ok(Certified {
        key: Arc::new(certified),
        names: parsed.names,
        shown: parsed.shown,
        file: cert.to_path_buf(),
        not_after: parsed.not_after_text,
        expires_at: parsed.not_after,
        about: format!("{}, SHA-256 {fingerprint}…", key_kind(&signing)),
    })
}

/// What kind of key signs: `ECDSA P-256`, `RSA`, `Ed25519`.
fn key_kind(key: &Arc<dyn rustls::sign::SigningKey>) -> &'static str {
    use rustls::SignatureScheme as Scheme;
    let offers = |scheme| key.choose_scheme(&[scheme]).is_some();
    if offers(Scheme::ECDSA_NISTP256_SHA256) {
        "ECDSA P-256"
    } else if offers(Scheme::ECDSA_NISTP384_SHA384) {
        "ECDSA P-384"
    } else if offers(Scheme::ED25519) {
        "Ed25519"
    } else if offers(Scheme::RSA_PSS_SHA256) || offers(Scheme::RSA_PKCS1_SHA256) {
        "RSA"
    } else {
        "key"
    }
}

/// Every certificate in a PEM file, in order (the server's own first).
fn chain(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, what)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{}: not a PEM certificate chain: {err}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in it (a PEM file with -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(chain)
}

/// What the server needs of its own certificate.
struct Parsed {
    /// The DNS names it is for (subjectAltName, or its common name without one), lower case.
    names: Vec<String>,
    /// Its names as written, IP addresses included, for the log.
    shown: Vec<String>,
    not_after: i64,
    not_after_text: String,
}

impl Parsed {
    fn of(der: &CertificateDer<'_>, path: &Path) -> Result<Parsed, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|err| format!("{}: not an X.509 certificate: {err}", path.display()))?;
        use x509_parser::extensions::GeneralName;
        let (mut names, mut shown) = (Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => {
                        names.push(dns.to_ascii_lowercase());
                        shown.push((*dns).to_owned());
                    }
                    GeneralName::IPAddress(bytes) => shown.extend(ip(bytes).map(|ip| ip.to_string())),
                    _ => {}
                }
            }
        }
        if names.is_empty() {
            let common = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
            names.extend(common.map(str::to_ascii_lowercase));
            shown.extend(common.map(str::to_owned));
        }
        let validity = cert.validity();
        Ok(Parsed {
            names,
            shown,
            not_after: validity.not_after.timestamp(),
            not_after_text: validity.not_after.to_string(),
        })
    }
}

/// An IP address in a subjectAltName.
fn ip(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// `--tls-client-ca`: the verifier of client certificates issued by its CAs.
pub(super) fn client_verifier(
    provider: &Arc<CryptoProvider>,
    path: &Path,
    auth: TlsClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in chain(path, "client CA (--tls-client-ca)")? {
        roots
            .add(ca)
            .map_err(|err| format!("{}: cannot use this CA certificate: {err}", path.display()))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
    let builder = match auth {
        TlsClientAuth::Required => builder,
        TlsClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .map_err(|err| format!("{}: cannot verify clients with it: {err}", path.display()))
}

/// `--tls-ticket-key`: a file of 48 or 80 random bytes, as nginx's
/// `ssl_session_ticket_key` (`openssl rand 80 > ticket.key`).
pub(super) fn ticket_key(path: &Path) -> Result<[u8; TICKET_KEY_LEN], String> {
    let bytes = read(path, "ticket key (--tls-ticket-key)")?;
    ticket_key_from(&bytes).ok_or_else(|| {
        format!(
            "{}: {} bytes; a ticket key file holds 48 or 80 random bytes (openssl rand 80 > {})",
            path.display(),
            bytes.len(),
            path.display()
        )
    })
}

/// A ticket key from a file's bytes: the name is the first 16; the key the
/// next 32 of a 48-byte file, the last 32 of an 80-byte one (nginx's AES key).
pub(crate) fn ticket_key_from(bytes: &[u8]) -> Option<[u8; TICKET_KEY_LEN]> {
    let key = match bytes.len() {
        48 => &bytes[16..48],
        80 => &bytes[48..80],
        _ => return None,
    };
    let mut out = [0u8; TICKET_KEY_LEN];
    out[..16].copy_from_slice(&bytes[..16]);
    out[16..].copy_from_slice(key);
    Some(out)
}
