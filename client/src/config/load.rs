//! Layered loading and error formatting.

use super::yaml::Yaml;
use figment::providers::{Env, Format, Serialized};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Where configuration comes from.
pub struct Layers<'a> {
    /// The YAML file; `None` uses `embedded`.
    pub file: Option<&'a Path>,
    /// Built-in YAML used when no file is given.
    pub embedded: &'static str,
    /// Environment prefix, e.g. `TUNNELD_`. Nested keys use `__`: `TUNNELD_ADMIN__LISTEN`.
    pub env_prefix: &'static str,
    /// Top-level keys the environment may set (other `PREFIX_*` variables are ignored).
    pub env_keys: &'static [&'static str],
    /// `key.path=value` overrides from the command line.
    pub sets: &'a [String],
}

/// A configuration error: each line names a key path and what was wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}", lines.join("\n"))]
pub struct ConfigError {
    pub lines: Vec<String>,
}

impl ConfigError {
    pub fn one(line: impl Into<String>) -> Self {
        Self {
            lines: vec![line.into()],
        }
    }
}

#[doc(hidden)]
pub fn describe(err: figment::Error, prefix: &str) -> ConfigError {
    let lines = err
        .into_iter()
        .map(|e| {
            let mut path: Vec<String> = Vec::new();
            if !prefix.is_empty() {
                path.push(prefix.to_string());
            }
            path.extend(e.path.iter().cloned());
            // Name the file or the environment; values from code (--set, components) carry
            // only a source-code location, which helps no one.
            let source = match e.metadata.as_ref() {
                Some(m) => match &m.source {
                    Some(figment::Source::File(f)) => format!("{}: ", f.display()),
                    _ if m.name.contains("environment") => format!("{}: ", m.name),
                    _ => String::new(),
                },
                None => String::new(),
            };
            let key = if path.is_empty() {
                "(top level)".to_string()
            } else {
                path.join(".")
            };
            format!("{source}{key}: {}", e.kind)
        })
        .collect();
    ConfigError { lines }
}

/// Builds the layered figment.
pub fn figment(layers: &Layers<'_>) -> Result<Figment, ConfigError> {
    let mut fig = match layers.file {
        Some(path) => {
            if !path.exists() {
                return Err(ConfigError::one(format!(
                    "{}: no such file",
                    path.display()
                )));
            }
            Figment::from(Yaml::file_exact(path))
        }
        None => Figment::from(Yaml::string(layers.embedded)),
    };
    let keys = layers.env_keys;
    fig = fig.merge(
        Env::prefixed(layers.env_prefix)
            .split("__")
            .filter(move |k| {
                let first = k.as_str().split('.').next().unwrap_or("");
                keys.iter().any(|top| top.eq_ignore_ascii_case(first))
            }),
    );
    for set in layers.sets {
        let (key, raw) = set
            .split_once('=')
            .ok_or_else(|| ConfigError::one(format!("--set `{set}`: expected key.path=value")))?;
        let value: Value = serde_yaml_ng::from_str(raw).map_err(|e| {
            ConfigError::one(format!("--set {key}: cannot read value `{raw}`: {e}"))
        })?;
        fig = fig.merge(Serialized::default(key.trim(), value));
    }
    Ok(fig)
}

/// Extracts the whole configuration.
pub fn load<T: DeserializeOwned>(layers: &Layers<'_>) -> Result<T, ConfigError> {
    figment(layers)?.extract().map_err(|e| describe(e, ""))
}

/// Extracts a plug-in component (`transports.<name>`), whose `type:` chose `T`. The `type`
/// key is removed first so each plug-in config can deny unknown keys.
pub fn component<T: DeserializeOwned>(
    section: &str,
    name: &str,
    raw: &Value,
) -> Result<T, ConfigError> {
    let prefix = format!("{section}.{name}");
    let mut dict: Dict = match raw {
        Value::Dict(_, d) => d.clone(),
        _ => {
            return Err(ConfigError::one(format!(
                "{prefix}: expected a map with a `type` key"
            )))
        }
    };
    dict.remove("type");
    Figment::from(Serialized::defaults(dict))
        .extract()
        .map_err(|e| describe(e, &prefix))
}

/// The `type` of a plug-in component.
pub fn component_type(
    section: &str,
    name: &str,
    raw: &Value,
    known: &[&str],
) -> Result<String, ConfigError> {
    let prefix = format!("{section}.{name}");
    let ty = match raw {
        Value::Dict(_, d) => d.get("type").and_then(|v| v.as_str()).map(str::to_string),
        _ => {
            return Err(ConfigError::one(format!(
                "{prefix}: expected a map with a `type` key"
            )))
        }
    };
    match ty {
        None => Err(ConfigError::one(format!(
            "{prefix}.type: missing (expected one of: {})",
            known.join(", ")
        ))),
        Some(t) if known.contains(&t.as_str()) => Ok(t),
        Some(t) => Err(ConfigError::one(format!(
            "{prefix}.type: unknown type `{t}` (expected one of: {})",
            known.join(", ")
        ))),
    }
}

/// Resolves `p` against the directory of the config file (or the working directory).
pub fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match base.and_then(Path::parent) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}
