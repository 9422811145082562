//! The content-header frame of a message: its exact size on the wire, and
//! fitting a re-sent message's headers under the broker's frame limit.
//!
//! A message's properties travel in one frame. A frame over the negotiated
//! `frame_max` makes the broker close the whole connection
//! (`frame_too_large`), so a publish that would send one fails alone
//! instead, and a dead letter or retry, which adds headers to what came in,
//! drops foreign headers until it fits.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

/// Bytes of a content-header frame besides the properties: frame type,
/// channel and size (7), class, weight and body size (12), frame end (1).
const FRAME_OVERHEAD: usize = 20;

/// The longest list of dropped header names kept, in bytes.
const LIST_MAX: usize = 1024;

use crate::headers::TRIMMED_HEADER;

/// The size of the content-header frame that carries `properties`.
pub(crate) fn size(properties: &BasicProperties) -> usize {
    let encoded = lapin::protocol::basic::gen_properties::<Vec<u8>>(properties)(Vec::new().into());
    // Writing to a Vec cannot fail; if it ever did, call it too large.
    encoded.map_or(usize::MAX, |written| {
        usize::try_from(written.position).unwrap_or(usize::MAX) + FRAME_OVERHEAD
    })
}

/// Whether `properties` fit a frame of `frame_max` bytes by a cheap upper
/// bound, without encoding them: true for the usual message (string
/// headers of a few hundred bytes); false means "measure", not "too large".
pub(crate) fn surely_fits(properties: &BasicProperties, frame_max: usize) -> bool {
    // Every property besides the headers is a short string (at most 256
    // bytes encoded) or a number: 14 of them, plus flags and overhead.
    let mut bound = FRAME_OVERHEAD + 2 + 14 * 256 + 4;
    if let Some(headers) = properties.headers() {
        for (name, value) in headers.inner() {
            let AMQPValue::LongString(text) = value else {
                return false;
            };
            bound += 1 + name.as_str().len() + 1 + 4 + text.as_bytes().len();
        }
    }
    bound <= frame_max
}

/// The encoded size of one header entry (name and value).
fn entry_size(name: &ShortString, value: &AMQPValue) -> usize {
    let mut one = FieldTable::default();
    one.insert(name.clone(), value.clone());
    // A table of one entry: the entry plus the table's 4-byte length and
    // the 2-byte flags of an otherwise empty property list.
    size(&BasicProperties::default().with_headers(one)) - FRAME_OVERHEAD - 6
}

/// Makes `properties` fit a frame of `frame_max` bytes by dropping headers
/// not named in `keep`, largest first; the names dropped are listed in
/// [`TRIMMED_HEADER`]. `None` when even that does not fit.
pub(crate) fn fit(
    properties: BasicProperties,
    frame_max: usize,
    keep: &[&str],
) -> Option<BasicProperties> {
    if size(&properties) <= frame_max {
        return Some(properties);
    }
    let mut headers = properties
        .headers()
        .as_ref()
        .map(|table| table.inner().clone())
        .unwrap_or_default();
    let mut droppable: Vec<(usize, ShortString)> = headers
        .iter()
        .filter(|(name, _)| !keep.contains(&name.as_str()))
        .map(|(name, value)| (entry_size(name, value), name.clone()))
        .collect();
    droppable.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    let mut dropped = Vec::new();
    let mut current = size(&properties);
    // Room for the list of what was dropped (at most about 1 KiB).
    let budget = frame_max.saturating_sub(LIST_MAX + 32);
    for (entry, name) in droppable {
        if current <= budget {
            break;
        }
        headers.remove(&name);
        current = current.saturating_sub(entry);
        dropped.push(name);
    }
    let mut list = String::new();
    for name in &dropped {
        let name: String = name.as_str().chars().take(64).collect();
        if list.len() + name.len() > LIST_MAX {
            list.push_str(",…");
            break;
        }
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(&name);
    }
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(name, value);
    }
    table.insert(
        TRIMMED_HEADER.into(),
        AMQPValue::LongString(list.as_str().into()),
    );
    let trimmed = properties.with_headers(table);
    (size(&trimmed) <= frame_max).then_some(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(headers: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, value) in headers {
            table.insert((*name).into(), value.clone());
        }
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(table)
    }

    fn text(len: usize) -> AMQPValue {
        AMQPValue::LongString("x".repeat(len).as_str().into())
    }

    #[test]
    fn size_is_the_encoded_frame() {
        let empty = size(&BasicProperties::default());
        assert_eq!(empty, FRAME_OVERHEAD + 2, "the flags alone");
        let one = size(&with(&[("a", text(10))]));
        // flags 2, content-type 1+16, table 4 + (1+1 + 1+4+10)
        assert_eq!(one, FRAME_OVERHEAD + 2 + 17 + 4 + 17);
        assert_eq!(entry_size(&"a".into(), &text(10)), 17);
    }

    #[test]
    fn fit_drops_the_largest_foreign_headers_and_says_which() {
        let properties = with(&[
            ("x-tidings-reason", text(20)),
            ("big", text(70_000)),
            ("medium", text(50_000)),
            ("small", text(10)),
        ]);
        let fitted = fit(properties, 131_072 - 70_000, &["x-tidings-reason"]).unwrap();
        let headers = fitted.headers().clone().unwrap();
        assert!(headers.inner().contains_key("x-tidings-reason"));
        assert!(headers.inner().contains_key("small"));
        assert!(!headers.inner().contains_key("big"));
        assert!(size(&fitted) <= 131_072 - 70_000);
        let Some(AMQPValue::LongString(list)) = headers.inner().get(TRIMMED_HEADER) else {
            panic!("no trimmed header");
        };
        assert_eq!(list.to_string(), "big");
    }

    #[test]
    fn the_cheap_bound_never_passes_what_does_not_fit() {
        for len in [0, 10, 1_000, 100_000, 130_000, 131_000] {
            let properties = with(&[("h", text(len)), ("x-tidings-tag", text(20))]);
            if surely_fits(&properties, 131_072) {
                assert!(size(&properties) <= 131_072, "{len}");
            }
        }
        assert!(surely_fits(&with(&[("h", text(100))]), 131_072));
        assert!(!surely_fits(&with(&[("h", text(131_000))]), 131_072));
    }

    #[test]
    fn fit_gives_up_when_kept_headers_alone_are_too_large() {
        let properties = with(&[("keep", text(10_000))]);
        assert!(fit(properties, 4096, &["keep"]).is_none());
    }

    #[test]
    fn ten_thousand_small_headers_are_trimmed_to_fit() {
        let headers: Vec<(String, AMQPValue)> =
            (0..10_000).map(|i| (format!("h{i}"), text(8))).collect();
        let mut table = FieldTable::default();
        for (name, value) in &headers {
            table.insert(name.as_str().into(), value.clone());
        }
        let properties = BasicProperties::default().with_headers(table);
        let fitted = fit(properties, 8192, &[]).unwrap();
        assert!(size(&fitted) <= 8192);
    }
}
