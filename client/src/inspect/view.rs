//! How the inspector shows what it captured: bodies decoded for reading (chunks joined, JSON
//! pretty-printed, binary as hex), secrets masked, and HTML escaping.

use super::store::Body;

/// Header fields whose values are secrets: masked wherever a list shows them.
const SECRET: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

pub fn is_secret(name: &str) -> bool {
    SECRET.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// A value as a list shows it: secrets as dots and their length.
pub fn masked(name: &str, value: &[u8]) -> String {
    if is_secret(name) {
        format!("•••••• ({} bytes, masked)", value.len())
    } else {
        String::from_utf8_lossy(value).into_owned()
    }
}

pub use tunneld_core::html::esc;

/// The payload of a chunked body (as much as the captured bytes hold); the bytes unchanged
/// when they are not chunked.
pub fn payload(body: &Body) -> Vec<u8> {
    if !body.chunked {
        return body.bytes.clone();
    }
    let mut out = Vec::new();
    let mut rest = body.bytes.as_slice();
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(&rest[..nl]);
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            break;
        };
        rest = &rest[nl + 1..];
        if size == 0 {
            break;
        }
        let take = size.min(rest.len());
        out.extend_from_slice(&rest[..take]);
        rest = rest.get(take + 2..).unwrap_or(&[]);
    }
    out
}

/// How a body reads: a note on what it is, and the text to show.
pub struct Shown {
    pub note: String,
    pub text: String,
}

/// `body` (of a message with these headers) for reading.
pub fn show(headers: &[(String, Vec<u8>)], body: &Body) -> Shown {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let bytes = payload(body);
    let mut note = match body.wire_len {
        0 => {
            return Shown {
                note: "no body".into(),
                text: String::new(),
            }
        }
        n => format!("{n} bytes"),
    };
    if body.chunked {
        note.push_str(", chunked");
    }
    if body.truncated {
        note.push_str(&format!(
            ", cut at {} bytes (inspect.max_body)",
            body.bytes.len()
        ));
    }
    let kind = header("content-type")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if let Some(coding) = header("content-encoding").filter(|c| c != "identity") {
        note.push_str(&format!(", {coding}-encoded: shown as hex"));
        return Shown {
            note,
            text: hex_dump(&bytes),
        };
    }
    if kind.contains("json") {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            if let Ok(pretty) = serde_json::to_string_pretty(&v) {
                note.push_str(", JSON");
                return Shown { note, text: pretty };
            }
        }
    }
    match std::str::from_utf8(&bytes) {
        Ok(t)
            if !t
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            Shown {
                note,
                text: t.to_string(),
            }
        }
        _ => {
            note.push_str(", binary: shown as hex");
            Shown {
                note,
                text: hex_dump(&bytes),
            }
        }
    }
}

/// 16 bytes a line: offset, hex, printable ASCII.
pub fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = line
            .iter()
            .map(|b| match b {
                0x20..=0x7e => *b as char,
                _ => '.',
            })
            .collect();
        out.push_str(&format!("{:08x}  {:<47}  {ascii}\n", i * 16, hex.join(" ")));
    }
    out
}

/// `HH:MM:SS.mmm` (UTC) of a time.
pub fn clock(at: std::time::SystemTime) -> String {
    let d = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: &[u8], chunked: bool) -> Body {
        Body {
            bytes: bytes.to_vec(),
            wire_len: bytes.len() as u64,
            truncated: false,
            chunked,
            complete: true,
        }
    }

    #[test]
    fn chunks_are_joined_and_json_is_pretty() {
        let b = body(b"6\r\n{\"a\":1\r\n1;x=y\r\n}\r\n0\r\n\r\n", true);
        assert_eq!(payload(&b), b"{\"a\":1}");
        let h = vec![("Content-Type".to_string(), b"application/json".to_vec())];
        let s = show(&h, &b);
        assert_eq!(s.text, "{\n  \"a\": 1\n}");
        assert!(
            s.note.contains("chunked") && s.note.contains("JSON"),
            "{}",
            s.note
        );
    }

    #[test]
    fn binary_and_encoded_bodies_are_hex_and_secrets_are_masked() {
        let s = show(&[], &body(&[0, 1, 2, b'A'], false));
        assert!(s.text.starts_with("00000000  00 01 02 41"), "{}", s.text);
        assert!(s.text.ends_with("....A\n") || s.text.contains("...A"));
        let gz = vec![("content-encoding".to_string(), b"gzip".to_vec())];
        assert!(show(&gz, &body(b"text", false)).note.contains("gzip"));
        assert_eq!(masked("Cookie", b"a=b"), "•••••• (3 bytes, masked)");
        assert_eq!(masked("Accept", b"*/*"), "*/*");
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
