//! Reading a plugin config file (YAML or JSON) into the `serde_json::Value` the filter's
//! compiler takes, so the CLI and the filter judge exactly the same document.

use std::path::Path;

use serde_json::Value;
use sluice::config::{compile, compile_json, Config, ConfigErrors};

/// How a file's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    /// No telling extension: JSON if it parses as JSON, else YAML.
    Guess,
}

impl Format {
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("json") => Format::Json,
            Some("yaml" | "yml") => Format::Yaml,
            _ => Format::Guess,
        }
    }
}

/// Why a file could not be turned into a compiled config.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    /// The document is not YAML (or, for `.json` files, not JSON).
    #[error("not valid {format}: {message}")]
    Syntax { format: &'static str, message: String },
    #[error("not valid UTF-8 text")]
    NotUtf8,
    /// The document parsed; the compiler rejected it.
    #[error("{0}")]
    Config(ConfigErrors),
}

impl LintError {
    /// One line per problem, as printed to stderr.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LintError::Config(errors) => errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Parses `bytes` as `format` and compiles the result with the filter's own compiler.
pub fn lint_bytes(bytes: &[u8], format: Format) -> Result<Config, LintError> {
    match format {
        // The exact path Envoy's bytes take in `on_configure`.
        Format::Json => compile_json(bytes).map_err(|e| json_or_config(bytes, e)),
        Format::Yaml => compile(&yaml(bytes)?).map_err(LintError::Config),
        Format::Guess => match serde_json::from_slice::<Value>(bytes) {
            Ok(value) => compile(&value).map_err(LintError::Config),
            Err(_) => compile(&yaml(bytes)?).map_err(LintError::Config),
        },
    }
}

fn yaml(bytes: &[u8]) -> Result<Value, LintError> {
    let text = std::str::from_utf8(bytes).map_err(|_| LintError::NotUtf8)?;
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| LintError::Syntax { format: "YAML", message: e.to_string() })
}

/// `compile_json` reports a JSON syntax error as a config error; say it plainly instead.
fn json_or_config(bytes: &[u8], errors: ConfigErrors) -> LintError {
    match serde_json::from_slice::<Value>(bytes) {
        Err(e) if !bytes.iter().all(u8::is_ascii_whitespace) => LintError::Syntax { format: "JSON", message: e.to_string() },
        _ => LintError::Config(errors),
    }
}
