//! A figment format over `serde_yaml_ng` (figment's own YAML support uses a deprecated crate).

use figment::providers::Format;
use serde::de::DeserializeOwned;

pub struct Yaml;

impl Format for Yaml {
    type Error = serde_yaml_ng::Error;
    const NAME: &'static str = "YAML";

    fn from_str<T: DeserializeOwned>(string: &str) -> Result<T, Self::Error> {
        serde_yaml_ng::from_str(string)
    }
}
