//! Text from the wire, cut to a size fit for a log line or a header.

/// The longest text from the wire that goes into a log line or a header.
const TEXT_MAX: usize = 1024;

/// `text` cut to at most [`TEXT_MAX`] bytes (at a character boundary),
/// marked when cut: text from the wire can be as large as a frame.
pub(crate) fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= TEXT_MAX {
        return text.into();
    }
    let mut end = TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}
