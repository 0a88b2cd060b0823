//! `application/x-www-form-urlencoded` bodies: what the HTML forms of tunneld's dashboard and
//! tunnelc's inspector post. Bad encoding is an error that names it; the caller caps the
//! body's size when it reads it.

/// Most fields one form may carry.
const MAX_FIELDS: usize = 16;

/// A decoded form: its fields in order.
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Decodes `body`; an error names what was wrong.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the form is not UTF-8")?;
        let mut out = Vec::new();
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            if out.len() == MAX_FIELDS {
                return Err(format!("the form has more than {MAX_FIELDS} fields"));
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.push((decode(k)?, decode(v)?));
        }
        Ok(Self(out))
    }

    /// The first value of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes one component (`+` is a space, `%XX` a byte); the error names the bad part.
pub fn decode(s: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "bad %-encoding in the form near `{}`",
            s.chars().take(20).collect::<String>()
        )
    };
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = bytes.next().and_then(|c| (c as char).to_digit(16));
                let lo = bytes.next().and_then(|c| (c as char).to_digit(16));
                match (hi, lo) {
                    (Some(h), Some(l)) => (h * 16 + l) as u8,
                    _ => return Err(bad()),
                }
            }
            b => b,
        });
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_fields() {
        let f = Form::parse(b"token=a%2Bb+c&csrf=x&empty=&flag").expect("valid");
        assert_eq!(f.get("token"), Some("a+b c"));
        assert_eq!(f.get("csrf"), Some("x"));
        assert_eq!(f.get("empty"), Some(""));
        assert_eq!(f.get("flag"), Some(""));
        assert_eq!(f.get("nope"), None);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(Form::parse(b"a=%zz").is_err());
        assert!(Form::parse(b"a=%2").is_err());
        assert!(Form::parse(&[0xff]).is_err());
        assert!(Form::parse(b"a=%ff").is_err());
        let many = vec!["a=1"; 17].join("&");
        assert!(Form::parse(many.as_bytes()).is_err());
    }
}
