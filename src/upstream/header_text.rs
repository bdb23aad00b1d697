//! The `x-fusillade-custom-id` header carries a line's `custom_id`, which may
//! hold any text (accents, emoji, spaces, control characters) while an HTTP
//! header value may hold only visible ASCII. So the value is percent-encoded:
//! every byte of its UTF-8 outside `!`..=`~`, and `%` itself, is written as
//! `%XX`. An ASCII custom_id without `%` goes unchanged, so the header stays
//! readable for the common case.

/// The header value for `text`.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text a header value written by [`encode`] holds; `None` when it is
/// not such a value (a bad escape, or bytes that are not UTF-8).
pub fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn plain_ascii_goes_unchanged() {
        assert_eq!(encode("line-1_A.b~"), "line-1_A.b~");
    }

    #[test]
    fn any_text_becomes_a_header_value_and_comes_back() {
        for text in [
            "café",
            "a b",
            "100%",
            "%41",
            "tab\there",
            "nl\nx",
            "\u{7f}",
            "🚀 emoji",
            "",
            " lead",
        ] {
            let v = encode(text);
            assert!(HeaderValue::from_str(&v).is_ok(), "{text:?} gave {v:?}");
            assert_eq!(decode(&v).as_deref(), Some(text), "{text:?}");
        }
    }

    #[test]
    fn bad_escapes_are_refused() {
        assert_eq!(decode("%"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%FF"), None);
    }
}
