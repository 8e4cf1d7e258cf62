//! Reading an RFC 5322 message just enough to sign it: its header fields
//! (raw, with their folding) and where the body starts; and the domain of the
//! first address in its From field.
//!
//! Parsing is lenient: a line that is neither a field nor a continuation is
//! kept as an unnamed field (never signed, never fatal), and a message with no
//! blank line has an empty body.

/// One header field as it appears in the message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderField<'m> {
    /// The name before the colon, without trailing whitespace.
    pub name: &'m [u8],
    /// The whole field: name, colon, value, folding and final line end.
    pub raw: &'m [u8],
}

/// The header fields of `message`, in order, and the body.
pub(crate) fn split_message(message: &[u8]) -> (Vec<HeaderField<'_>>, &[u8]) {
    let mut fields: Vec<HeaderField<'_>> = Vec::new();
    let mut position = 0;
    let mut field_start: Option<usize> = None;
    while let Some(rest) = message.get(position..) {
        if rest.is_empty() {
            break;
        }
        let line_len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |lf| lf + 1);
        let line = rest.get(..line_len).unwrap_or_default();
        let is_blank = line == b"\r\n" || line == b"\n";
        let is_continuation = line.first().is_some_and(|&b| b == b' ' || b == b'\t');
        if is_blank || !is_continuation {
            if let Some(start) = field_start.take() {
                fields.push(make_field(message.get(start..position).unwrap_or_default()));
            }
        }
        if is_blank {
            let body = message.get(position + line_len..).unwrap_or_default();
            return (fields, body);
        }
        if field_start.is_none() {
            // A continuation line before any field is kept as its own field.
            field_start = Some(position);
        }
        position += line_len;
    }
    if let Some(start) = field_start {
        fields.push(make_field(message.get(start..).unwrap_or_default()));
    }
    (fields, &[])
}

fn make_field(raw: &[u8]) -> HeaderField<'_> {
    let name = match raw.iter().position(|&b| b == b':') {
        Some(colon) => {
            let name = raw.get(..colon).unwrap_or_default();
            let end = name
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(0, |p| p + 1);
            let name = name.get(..end).unwrap_or_default();
            // A field name is printable ASCII without spaces (RFC 5322 §3.6.8).
            if name.iter().all(|&b| (33..=126).contains(&b)) {
                name
            } else {
                &[]
            }
        }
        None => &[],
    };
    HeaderField { name, raw }
}

/// The lowercased domain of the first address in the message's first From
/// field, or None when there is no From field or no parsable address in it.
///
/// Handles display names, quoted strings, comments, folding, groups and
/// several addresses (the first one wins).
pub fn from_domain(message: &[u8]) -> Option<String> {
    let (fields, _) = split_message(message);
    let from = fields
        .iter()
        .find(|field| field.name.eq_ignore_ascii_case(b"from"))?;
    let colon = from.raw.iter().position(|&b| b == b':')?;
    let value = from.raw.get(colon + 1..)?;
    let address = first_address(&strip_comments(value))?;
    let at = address.iter().rposition(|&b| b == b'@')?;
    let domain: Vec<u8> = address
        .get(at + 1..)?
        .iter()
        .copied()
        .filter(|&b| !b.is_ascii_whitespace())
        .collect();
    let domain = domain.strip_suffix(b".").unwrap_or(&domain);
    let valid = !domain.is_empty()
        && domain.iter().all(|&b| {
            b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_' || b >= 0x80
        });
    if !valid {
        return None;
    }
    let domain = String::from_utf8(domain.to_vec()).ok()?;
    Some(domain.to_lowercase())
}

/// Removes comments (nested, with quoted pairs) outside quoted strings and
/// unfolds line ends, keeping quoted strings intact.
fn strip_comments(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut depth = 0usize;
    let mut in_quote = false;
    let mut escaped = false;
    for &byte in value {
        if byte == b'\r' || byte == b'\n' {
            continue;
        }
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(byte);
            }
            continue;
        }
        match byte {
            b'\\' if in_quote || depth > 0 => {
                escaped = true;
                if depth == 0 {
                    out.push(byte);
                }
            }
            b'"' if depth == 0 => {
                in_quote = !in_quote;
                out.push(byte);
            }
            b'(' if !in_quote => depth += 1,
            b')' if !in_quote && depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(b' ');
                }
            }
            _ if depth > 0 => {}
            _ => out.push(byte),
        }
    }
    out
}

/// The addr-spec of the first mailbox in a comment-free mailbox list.
fn first_address(list: &[u8]) -> Option<Vec<u8>> {
    let mut in_quote = false;
    let mut escaped = false;
    let mut mailbox_start = 0;
    let mut angle_start: Option<usize> = None;
    for (index, &byte) in list.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        if in_quote {
            match byte {
                b'\\' => escaped = true,
                b'"' => in_quote = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_quote = true,
            b'<' => angle_start = Some(index + 1),
            b'>' => {
                if let Some(start) = angle_start.take() {
                    let inside = list.get(start..index)?;
                    // An obsolete route (`<@relay:user@host>`) ends at the last ':'.
                    let inside = match inside.iter().rposition(|&b| b == b':') {
                        Some(colon) => inside.get(colon + 1..)?,
                        None => inside,
                    };
                    if inside.contains(&b'@') {
                        return Some(inside.to_vec());
                    }
                }
            }
            b':' if angle_start.is_none() => mailbox_start = index + 1, // group name
            b',' | b';' if angle_start.is_none() => {
                let candidate = trim(list.get(mailbox_start..index)?);
                if candidate.contains(&b'@') {
                    return Some(candidate.to_vec());
                }
                mailbox_start = index + 1;
            }
            _ => {}
        }
    }
    if angle_start.is_some() {
        return None;
    }
    let candidate = trim(list.get(mailbox_start..)?);
    candidate.contains(&b'@').then(|| candidate.to_vec())
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(start), Some(end)) => bytes.get(start..=end).unwrap_or_default(),
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain_of(from_value: &str) -> Option<String> {
        from_domain(
            format!("Subject: x\r\nFrom:{from_value}\r\nTo: t@to.example\r\n\r\nbody\r\n")
                .as_bytes(),
        )
    }

    #[test]
    fn splits_fields_and_body() {
        let message = b"From: a@b.c\r\nSubject: one\r\n two\r\nX : y\r\n\r\nbody\r\n";
        let (fields, body) = split_message(message);
        let names: Vec<&[u8]> = fields.iter().map(|f| f.name).collect();
        assert_eq!(names, [&b"From"[..], b"Subject", b"X"]);
        assert_eq!(fields[1].raw, b"Subject: one\r\n two\r\n");
        assert_eq!(body, b"body\r\n");
    }

    #[test]
    fn message_without_blank_line_has_empty_body() {
        let (fields, body) = split_message(b"From: a@b.c\r\nSubject: s");
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[1].raw, b"Subject: s");
        assert!(body.is_empty());
    }

    #[test]
    fn from_forms() {
        assert_eq!(
            domain_of(" joe@Example.COM").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            domain_of(" Joe Q. <joe@a.example>").as_deref(),
            Some("a.example")
        );
        assert_eq!(
            domain_of(" \"Doe, John <x@evil.example>\" <john@good.example>").as_deref(),
            Some("good.example")
        );
        assert_eq!(
            domain_of(" (comment <x@evil.example>) john@good.example (more)").as_deref(),
            Some("good.example")
        );
        assert_eq!(
            domain_of(" John\r\n <john@folded.example>").as_deref(),
            Some("folded.example")
        );
        assert_eq!(
            domain_of(" first@one.example, second@two.example").as_deref(),
            Some("one.example")
        );
        assert_eq!(
            domain_of(" \"a@b\"@quoted.example").as_deref(),
            Some("quoted.example")
        );
        assert_eq!(
            domain_of(" Team: alice@team.example, bob@other.example;").as_deref(),
            Some("team.example")
        );
        assert_eq!(
            domain_of(" <@relay.example:user@routed.example>").as_deref(),
            Some("routed.example")
        );
        assert_eq!(
            domain_of(" user@trailing.example.").as_deref(),
            Some("trailing.example")
        );
        assert_eq!(domain_of(" undisclosed-recipients:;"), None);
        assert_eq!(domain_of(" no address here"), None);
        assert_eq!(domain_of(" <broken@x.example"), None);
        assert_eq!(domain_of(" user@[192.0.2.1]"), None);
        assert_eq!(from_domain(b"Subject: none\r\n\r\n"), None);
    }

    #[test]
    fn first_from_field_wins() {
        let message = b"from: a@first.example\r\nFrom: b@second.example\r\n\r\n";
        assert_eq!(from_domain(message).as_deref(), Some("first.example"));
    }
}
