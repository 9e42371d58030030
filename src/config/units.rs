//! Values as users type them, on the command line and in the file: hosts and
//! addresses, durations, sizes; and the serde adapters that read a file value
//! as the flag would.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// `IP:PORT` (`127.0.0.1:9100`, `[::1]:9100`); host names are not looked up.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "'{text}' is not an IP:PORT address (use e.g. 127.0.0.1:9100 or [::1]:9100; host names are not looked up)"
        )
    })
}

/// An IP address, with or without the brackets of `[::1]`.
pub(super) fn parse_host(text: &str) -> Result<IpAddr, String> {
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    bare.parse()
        .map_err(|_| format!("'{text}' is not an IP address (use e.g. 0.0.0.0, 127.0.0.1, ::1)"))
}

/// The lowest `--max-worker-memory`. A worker of the default app idles at about
/// 2.3 MiB resident and a small app on tokio and hyper at 3 to 6 MiB: a limit
/// under that would be exceeded by every fresh worker, and each replacement would
/// be recycled in turn, forever.
pub(crate) const MIN_WORKER_MEMORY: u64 = 8 << 20;

/// The longest duration any setting takes. A deadline is `now + duration`:
/// beyond what `Instant` can hold that addition would overflow, and a timeout of
/// more than a year is a typo, not a wish.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `duration`, unless it is longer than [`MAX_DURATION`].
pub(super) fn at_most_a_year(duration: Duration, text: &str) -> Result<Duration, String> {
    if duration > MAX_DURATION {
        return Err(format!("'{text}' is longer than a year, the most any timeout may be"));
    }
    Ok(duration)
}

/// `30` (a bare number is seconds), or what humantime reads as users type it:
/// `30s`, `500ms`, `1m30s`, `2h`, `1.5s`; at most a year.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<f64>() {
        Ok(seconds) => Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range"))?,
        Err(_) => humantime::parse_duration(text)
            .map_err(|err| format!("'{text}' is not a duration ({err}; use e.g. 30, 30s, 500ms, 1m30s, 2h)"))?,
    };
    at_most_a_year(duration, text)
}

pub(super) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be greater than 0".into()),
        duration => Ok(duration),
    }
}

/// What bytesize reads as users type it (`512MiB`, `1.5GiB`, `100MB`, `512mb`,
/// `1048576` bytes); a unit letter alone (`64K`, `8m`, `2G`) is binary, as in
/// nginx (`client_max_body_size 1m` is 1 MiB).
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let binary = text
        .strip_suffix(['k', 'K', 'm', 'M', 'g', 'G'])
        .filter(|number| number.trim_end().parse::<f64>().is_ok())
        .map(|number| format!("{number}{}iB", &text[number.len()..].to_ascii_uppercase()));
    let bytes = binary
        .as_deref()
        .unwrap_or(text)
        .parse::<bytesize::ByteSize>()
        .map_err(|err| format!("'{text}' is not a size ({err}; use e.g. 512MiB, 1.5GiB, 100MB, 64K)"))?
        .as_u64();
    match bytes {
        0 => Err("must be greater than 0".into()),
        bytes => Ok(bytes),
    }
}

/// An HTTP/2 header list limit: a size (`64KiB`) from 1 KiB to 16 MiB.
pub(super) fn parse_header_list_size(text: &str) -> Result<u32, String> {
    header_list_bytes(parse_size(text)?).map_err(|why| format!("'{text}' {why}"))
}

/// `bytes` as an HTTP/2 header list limit, if it is from 1 KiB to 16 MiB.
pub(super) fn header_list_bytes(bytes: u64) -> Result<u32, &'static str> {
    match u32::try_from(bytes) {
        Ok(bytes) if (1 << 10..=16 << 20).contains(&bytes) => Ok(bytes),
        _ => Err("is not between 1KiB and 16MiB"),
    }
}

/// A file header list limit: bytes as a number, or a string like the flag.
pub(super) fn header_list_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let bytes = size(deserializer)?.unwrap_or_default();
    header_list_bytes(bytes)
        .map(Some)
        .map_err(|why| serde::de::Error::custom(format!("{bytes} {why}")))
}

/// A file size: bytes as a number, or a string like the flag (`"512MiB"`).
pub(super) fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    let parsed = match Raw::deserialize(deserializer)? {
        Raw::Bytes(bytes) => Ok(bytes),
        Raw::Text(text) => parse_size(&text),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

/// A file value given as a string, parsed like the flag (`host = "::1"`, `log_level = "debug"`).
pub(super) fn parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(&text);
    bare.parse()
        .map(Some)
        .map_err(|err| serde::de::Error::custom(format!("'{text}': {err}")))
}

/// A file duration: seconds as a number, or a string like the flag (`"500ms"`).
pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }
    let parsed = match Raw::deserialize(deserializer)? {
        Raw::Seconds(seconds) => Duration::try_from_secs_f64(seconds)
            .map_err(|err| format!("{seconds}: {err}"))
            .and_then(|duration| at_most_a_year(duration, &seconds.to_string())),
        Raw::Text(text) => parse_duration(&text),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

/// The shortest ticket-key rotation: a ticket outlives its key by at most one
/// period, and clients resume only within the lifetime they were told (the
/// period), so a shorter one would make resumption rare for nothing.
const MIN_TICKET_ROTATION: Duration = Duration::from_secs(60);

/// A ticket-key rotation period: a duration of at least a minute and at most a
/// week (tickets are told to live as long, and TLS 1.3 caps that at 7 days).
pub(super) fn parse_ticket_rotation(text: &str) -> Result<Duration, String> {
    let period = parse_duration(text)?;
    match period {
        p if p < MIN_TICKET_ROTATION => Err(format!("'{}' is shorter than a minute", text.trim())),
        p if p > Duration::from_secs(7 * 24 * 3600) => Err(format!(
            "'{}' is longer than a week, the most a TLS 1.3 ticket may live",
            text.trim()
        )),
        p => Ok(p),
    }
}

/// A file ticket-key rotation: seconds as a number, or a string like the flag.
pub(super) fn ticket_rotation<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let Some(period) = duration(deserializer)? else {
        return Ok(None);
    };
    parse_ticket_rotation(&format!("{}s", period.as_secs_f64()))
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A file list given as a list, or as one value (`tls_cert = "cert.pem"`).
pub(super) fn one_or_many<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<T> {
        Many(Vec<T>),
        One(T),
    }
    Ok(Some(match Raw::deserialize(deserializer)? {
        Raw::Many(many) => many,
        Raw::One(one) => vec![one],
    }))
}
