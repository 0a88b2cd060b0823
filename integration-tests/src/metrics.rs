//! A strict parser of the Prometheus text exposition format (enough to validate tunneld's).

use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;

/// One sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The value of `name` with exactly the given labels among its labels; 0 when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the text format; any malformed line is an error naming the line.
pub fn parse(text: &str) -> Result<Samples> {
    let mut out = Vec::new();
    let mut typed = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_)) if valid_name(name) => {}
                (Some("TYPE"), Some(name), Some(t))
                    if valid_name(name)
                        && ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) =>
                {
                    typed.insert(name.to_string(), t.to_string());
                }
                _ => bail!("line {n}: malformed comment `{line}`"),
            }
            continue;
        }
        let (head, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow!("line {n}: no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|_| anyhow!("line {n}: bad value `{v}`"))?,
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| anyhow!("line {n}: unclosed labels"))?;
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| anyhow!("line {n}: bad label `{pair}`"))?;
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or_else(|| anyhow!("line {n}: unquoted label value"))?;
                    if !valid_name(k) {
                        bail!("line {n}: bad label name `{k}`");
                    }
                    labels.insert(k.to_string(), v.to_string());
                }
                (name.to_string(), labels)
            }
        };
        if !valid_name(&name) {
            bail!("line {n}: bad metric name `{name}`");
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| typed.contains_key(*b))
            .unwrap_or(&name);
        if !typed.contains_key(base) {
            bail!("line {n}: sample `{name}` has no # TYPE line");
        }
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(Samples(out))
}
