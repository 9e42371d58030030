//! `Content-Length` values for HTTP/2 responses, kept for the next response of
//! the same length.
//!
//! hyper writes an HTTP/1.1 response's length straight into its buffer, but
//! over HTTP/2 it adds a `Content-Length` field to the head, made by
//! `HeaderValue::from(u64)`: a 20-byte buffer, then a second allocation for the
//! `Bytes`' shared header (the digits do not fill the buffer), both freed once
//! HPACK has encoded them. About 500 instructions per response, for the same
//! few digits each time: most services answer most requests with a handful of
//! lengths (a health check, a fixed page, an error). The worker sets the field
//! itself from this cache before hyper looks, so hyper keeps it; a value found
//! here is a clone (a reference count, no allocation).

use std::cell::RefCell;

use bytes::Bytes;
use hyper::header::HeaderValue;

/// Lengths kept, in a direct-mapped table (a length has one slot, and a new
/// length there replaces the old): a few hundred bytes per worker thread.
const SLOTS: usize = 16;

thread_local! {
    // One per worker thread; nothing is shared, so no lock.
    static KEPT: RefCell<[Option<(u64, HeaderValue)>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

/// The `Content-Length` value for `length`.
pub fn content_length(length: u64) -> HeaderValue {
    let slot = (length % SLOTS as u64) as usize;
    let kept = KEPT.try_with(|kept| {
        let mut kept = kept.borrow_mut();
        match &kept[slot] {
            Some((held, value)) if *held == length => value.clone(),
            _ => {
                let value = made(length);
                kept[slot] = Some((length, value.clone()));
                value
            }
        }
    });
    // Only while the thread's locals are being destroyed: made afresh.
    kept.unwrap_or_else(|_| made(length))
}

/// The digits, as `Bytes` whose length is its capacity (one exact allocation;
/// the first clone, into the cache's slot, adds the shared header, as any
/// `Bytes` clone of a vector does).
fn made(length: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let bytes = Bytes::copy_from_slice(digits.format(length).as_bytes());
    // Decimal digits are visible ASCII, which a header value always accepts.
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_is_written_in_decimal() {
        for length in [0, 7, 22, 1_000_000, u64::MAX] {
            assert_eq!(content_length(length), HeaderValue::from(length).to_str().unwrap());
        }
    }

    #[test]
    fn a_kept_value_is_shared_and_a_colliding_length_replaces_it() {
        let first = content_length(22);
        let again = content_length(22);
        // The same bytes: a clone of the kept value, not a new one.
        assert_eq!(first.as_bytes().as_ptr(), again.as_bytes().as_ptr());
        // 38 has 22's slot: it takes the slot, and is right.
        assert_eq!(content_length(22 + SLOTS as u64), "38");
        let after = content_length(22);
        assert_eq!(after, "22");
        assert_ne!(after.as_bytes().as_ptr(), first.as_bytes().as_ptr());
    }
}
