//! Reading a plugin config file (YAML or JSON) into the `serde_json::Value` the filter's
//! compiler takes, so the CLI and the filter judge exactly the same document.

use std::path::Path;

use serde_json::Value;
use sluice::config::{compile_json, compile_read, parse_json, read, Budget, Config, ConfigError, ConfigErrors, Parsed};

use crate::trust::Warning;

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
    #[error("not valid UTF-8 text: line {line}, byte {byte} of the file")]
    NotUtf8 { line: usize, byte: usize },
    /// Its aliases build more than a file of its size may (see [`Budget`]).
    #[error("{0}")]
    TooLarge(String),
    /// The document parsed; the compiler rejected it.
    #[error("{0}")]
    Config(ConfigErrors),
    /// Keys written twice in a bootstrap or a WasmPlugin, outside the plugin config it carries
    /// (whose own repeats are errors of that config), at their paths in the file; then what is
    /// wrong with the config itself, if anything, so that one run tells both.
    #[error("{}", outside(.repeats, .then.as_deref()).join("\n"))]
    Outside { repeats: Vec<ConfigError>, then: Option<Box<LintError>> },
}

fn outside(repeats: &[ConfigError], then: Option<&LintError>) -> Vec<String> {
    let around = repeats.iter().map(|r| format!("outside the plugin config: {r}"));
    around.chain(then.map(LintError::lines).unwrap_or_default()).collect()
}

impl LintError {
    /// One line per problem, as printed to stderr.
    pub fn lines(&self) -> Vec<String> {
        match self {
            LintError::Config(errors) => errors.iter().map(ToString::to_string).collect(),
            LintError::Outside { repeats, then } => outside(repeats, then.as_deref()),
            other => vec![other.to_string()],
        }
    }
}

/// `loaded`, unless keys were written twice around the plugin config (`repeats`): those are
/// refused, with what `loaded` found wrong in the config after them.
fn outside_first(repeats: Vec<ConfigError>, loaded: Result<Loaded, LintError>) -> Result<Loaded, LintError> {
    if repeats.is_empty() {
        return loaded;
    }
    Err(LintError::Outside { repeats, then: loaded.err().map(Box::new) })
}

/// Parses `bytes` as `format` and compiles the result with the filter's own compiler.
pub fn lint_bytes(bytes: &[u8], format: Format) -> Result<Config, LintError> {
    match format {
        // The exact path Envoy's bytes take in `on_configure`.
        Format::Json => compile_json(bytes).map_err(|e| json_or_config(bytes, e)),
        Format::Yaml => compile_parsed(yaml(bytes)?),
        Format::Guess => match parse_json(bytes) {
            Ok(parsed) => compile_parsed(parsed),
            Err(_) => compile_parsed(yaml(bytes)?),
        },
    }
}

fn compile_parsed(parsed: Parsed) -> Result<Config, LintError> {
    compile_read(&parsed.value, parsed.repeats).map_err(LintError::Config)
}

fn yaml(bytes: &[u8]) -> Result<Parsed, LintError> {
    let text = utf8(bytes)?;
    shallow(text)?;
    let mut budget = Budget::for_text(text.len());
    read(serde_yaml_ng::Deserializer::from_str(text), &mut budget).map_err(|e| yaml_error(&e, &budget))
}

/// Why reading YAML failed, with what it took of `budget`.
fn yaml_error(e: &serde_yaml_ng::Error, budget: &Budget) -> LintError {
    if budget.spent() {
        return LintError::TooLarge(e.to_string());
    }
    LintError::Syntax { format: "YAML", message: e.to_string() }
}

/// `compile_json` reports a JSON syntax error as a config error; say it plainly instead.
fn json_or_config(bytes: &[u8], errors: ConfigErrors) -> LintError {
    match parse_json(bytes) {
        Err(e) if !bytes.iter().all(u8::is_ascii_whitespace) => LintError::Syntax { format: "JSON", message: e.to_string() },
        _ => LintError::Config(errors),
    }
}

const WASM_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

/// One document of a file, with the keys written twice in it.
struct Doc {
    value: Value,
    repeats: Vec<ConfigError>,
    /// Its number in the file (from 1, empty ones counted), when the file has several.
    number: Option<usize>,
}

impl Doc {
    fn new(parsed: Parsed, number: Option<usize>) -> Doc {
        Doc { value: parsed.value, repeats: parsed.repeats, number }
    }

    /// Its repeat `r`, at its path in the file.
    fn in_file(&self, r: &ConfigError) -> ConfigError {
        match self.number {
            Some(n) => ConfigError { path: format!("document {n}: {}", r.path), ..r.clone() },
            None => r.clone(),
        }
    }
}

/// Every document of a YAML or JSON file, the empty ones left out.
fn documents(bytes: &[u8], format: Format) -> Result<Vec<Doc>, LintError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    match format {
        Format::Json => {
            let v = parse_json(bytes).map_err(|e| LintError::Syntax { format: "JSON", message: e.to_string() })?;
            return Ok(vec![Doc::new(v, None)]);
        }
        Format::Guess => {
            if let Ok(v) = parse_json(bytes) {
                return Ok(vec![Doc::new(v, None)]);
            }
        }
        Format::Yaml => {}
    }
    let text = utf8(bytes)?;
    shallow(text)?;
    let mut out = Vec::new();
    let mut count = 0;
    // One budget for the whole file: every document read is kept.
    let mut budget = Budget::for_text(text.len());
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        count += 1;
        let parsed = read(doc, &mut budget).map_err(|e| yaml_error(&e, &budget))?;
        if !parsed.value.is_null() {
            out.push(Doc::new(parsed, Some(count)));
        }
    }
    if count == 1 {
        out.iter_mut().for_each(|d| d.number = None);
    }
    Ok(out)
}

/// `bytes` as text, or where they stop being UTF-8 (line and byte from 1).
fn utf8(bytes: &[u8]) -> Result<&str, LintError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        LintError::NotUtf8 { line: 1 + good.iter().filter(|b| **b == b'\n').count(), byte: e.valid_up_to() + 1 }
    })
}

/// How deep `[` and `{` may nest in YAML text: serde_yaml_ng refuses more than 128 levels, but
/// only after libyaml's scanner has read them, which takes time in proportion to the depth for
/// every token (a 200 KB file of 100,000 levels took minutes).
const MAX_FLOW_DEPTH: usize = 128;

/// Refuses YAML text whose flow collections nest deeper than [`MAX_FLOW_DEPTH`], before it is
/// parsed. Every `[` and `{` counts, in quotes and comments too: telling those apart would take
/// YAML's own scanner (a quote in a plain scalar opens nothing), and no config holds a hundred
/// unclosed brackets in its text.
fn shallow(text: &str) -> Result<(), LintError> {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_FLOW_DEPTH {
        let message = format!("[ and {{ nest {deepest} levels deep; at most {MAX_FLOW_DEPTH} are read");
        return Err(LintError::Syntax { format: "YAML", message });
    }
    Ok(())
}

/// `path` (of a value in a document) as a path in the plugin config at `config`, if it is in it.
fn within(path: &str, config: &str) -> Option<String> {
    let rest = path.strip_prefix(config)?;
    match rest.strip_prefix('.') {
        Some(field) => Some(field.to_string()),
        None => rest.starts_with('[').then(|| rest.to_string()),
    }
}

/// The plugin configurations (as JSON text for bootstraps, as values otherwise) in `doc`.
fn sluice_configs(doc: &Value) -> Vec<Result<Vec<u8>, Value>> {
    let mut out = Vec::new();
    crate::analysis::walk(doc, &mut |map| {
        if map.get("@type").and_then(Value::as_str) != Some(WASM_FILTER) {
            return;
        }
        // `get`, not `map["config"]`: a map indexed by a missing key panics.
        let conf = map.get("config").map_or(&Value::Null, |c| &c["configuration"]);
        match (conf.get("@type").and_then(Value::as_str), conf.get("value")) {
            (Some(STRING_VALUE), Some(Value::String(text))) => out.push(Ok(text.clone().into_bytes())),
            _ => out.push(Err(conf.clone())),
        }
    });
    out
}

/// How the connection manager that runs the Wasm filter of a bootstrap sets the client's
/// address (`source.address`): `use_remote_address` and `xff_num_trusted_hops`. `None` when
/// the bootstrap has no one such manager, or when that manager finds the address another way
/// (`original_ip_detection_extensions`, which Envoy allows only without those two) or appends
/// nothing to `x-forwarded-for` (`skip_xff_append`): the warnings assume neither.
fn address_settings(boot: &Value) -> Option<(bool, u64)> {
    let mut found = Vec::new();
    crate::analysis::walk(boot, &mut |map| {
        let Some(Value::Array(filters)) = map.get("http_filters") else { return };
        let wasm = filters.iter().any(|f| f["typed_config"]["@type"].as_str() == Some(WASM_FILTER));
        if wasm {
            let other_way =
                map.get("original_ip_detection_extensions").is_some_and(|e| e.as_array().is_some_and(|e| !e.is_empty()))
                    || map.get("skip_xff_append").and_then(Value::as_bool) == Some(true);
            // A BoolValue: a bare boolean in YAML or `{value: true}`; a uint32, which proto3 JSON
            // may also quote.
            let remote = &map.get("use_remote_address").cloned().unwrap_or(Value::Null);
            let remote = remote.as_bool().or_else(|| remote["value"].as_bool()).unwrap_or(false);
            let hops = map.get("xff_num_trusted_hops").map_or(Some(0), |h| h.as_u64().or_else(|| h.as_str()?.parse().ok()));
            found.push((!other_way).then_some(()).and(hops.map(|h| (remote, h))));
        }
    });
    match found.as_slice() {
        [one] => *one,
        _ => None,
    }
}

/// A compiled config and what the file around it says.
pub struct Loaded {
    pub config: Config,
    /// A bootstrap's route names.
    pub routes: Option<Vec<String>>,
    /// A bootstrap's cluster names.
    pub clusters: Option<Vec<String>>,
    /// A bootstrap's connection manager's address settings (see [`address_settings`]).
    pub address: Option<(bool, u64)>,
    /// A WasmPlugin's string values that Kubernetes reads as booleans (see [`yaml_1_1_booleans`]).
    pub booleans: Vec<Warning>,
}

/// Strings of a WasmPlugin's `pluginConfig` that are booleans to Kubernetes: `kubectl` reads
/// YAML 1.1, where an unquoted `yes`, `no`, `on`, `off`, `y` or `n` is `true` or `false`, while
/// this reader (YAML 1.2) keeps them as text. Envoy would then get `true` where the config
/// wants a string (an `exempt.headers` value, say) and refuse the config that lint passed.
fn yaml_1_1_booleans(v: &Value, path: &str, out: &mut Vec<Warning>) {
    const WORDS: &[&str] = &["y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF"];
    match v {
        Value::String(text) if WORDS.contains(&text.as_str()) => out.push(Warning {
            path: path.to_string(),
            message: format!(
                "{text:?}: if not quoted, Kubernetes reads it as a boolean (YAML 1.1) and the filter refuses it; quote it"
            ),
        }),
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, item)| yaml_1_1_booleans(item, &format!("{path}[{i}]"), out))
        }
        Value::Object(map) => {
            for (key, item) in map {
                let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                yaml_1_1_booleans(item, &at, out);
            }
        }
        _ => {}
    }
}

/// Reads a plugin config, an Envoy bootstrap (the config of its one Wasm filter, plus its
/// route names) or an Istio WasmPlugin (its `pluginConfig`), and compiles the config with the
/// filter's own compiler, on the bytes Envoy would pass where there are such bytes.
pub fn load_any(bytes: &[u8], format: Format) -> Result<Loaded, LintError> {
    let plain = |config| Loaded { config, routes: None, clusters: None, address: None, booleans: Vec::new() };
    // What does not parse is reported as a plugin config's syntax error would be; a file its
    // aliases blow up is not read twice.
    let mut docs = match documents(bytes, format) {
        Ok(docs) => docs,
        Err(e @ LintError::TooLarge(_)) => return Err(e),
        Err(_) => return lint_bytes(bytes, format).map(plain),
    };
    let syntax = |message: String| LintError::Syntax { format: "sluice input", message };
    let plugins: Vec<&Doc> = docs.iter().filter(|d| d.value["kind"] == "WasmPlugin").collect();
    match plugins.as_slice() {
        [plugin] => {
            // A key written twice in the plugin config is an error of that config, beside its
            // others; anywhere else in the file it is refused before them.
            let mut inside = Vec::new();
            let mut elsewhere = Vec::new();
            for doc in &docs {
                let mine = std::ptr::eq(doc, *plugin);
                for r in &doc.repeats {
                    match within(&r.path, "spec.pluginConfig").filter(|_| mine) {
                        Some(path) => inside.push(ConfigError { path, ..r.clone() }),
                        None => elsewhere.push(doc.in_file(r)),
                    }
                }
            }
            let cfg = &plugin.value["spec"]["pluginConfig"];
            let mut booleans = Vec::new();
            yaml_1_1_booleans(cfg, "", &mut booleans);
            let loaded = compile_read(cfg, inside).map(|config| Loaded { booleans, ..plain(config) }).map_err(LintError::Config);
            return outside_first(elsewhere, loaded);
        }
        // Checking only the first would pass the others unread.
        [_, _, ..] => {
            return Err(syntax(format!("this file has {} WasmPlugins; give each its own file", plugins.len())));
        }
        [] => {}
    }
    if let Some(boot) = docs.iter().find(|d| d.value.get("static_resources").is_some()) {
        // The plugin config is JSON text in it, read (with its repeats) by `compile_json`.
        let repeats: Vec<ConfigError> = docs.iter().flat_map(|d| d.repeats.iter().map(|r| d.in_file(r))).collect();
        let boot = &boot.value;
        let mut found = sluice_configs(boot);
        let loaded = match (found.len(), found.pop()) {
            (1, Some(Ok(json))) => compile_json(&json).map_err(LintError::Config).map(|config| {
                let (routes, address) = (crate::analysis::bootstrap_routes(boot), address_settings(boot));
                let clusters = crate::analysis::bootstrap_clusters(boot);
                Loaded { config, routes, clusters, address, booleans: Vec::new() }
            }),
            (1, Some(Err(_))) => Err(syntax("the Wasm filter's configuration is not a google.protobuf.StringValue".into())),
            (0, _) => Err(syntax("this Envoy bootstrap has no Wasm filter".into())),
            (n, _) => Err(syntax(format!("this Envoy bootstrap has {n} Wasm filters; give the plugin config itself"))),
        };
        return outside_first(repeats, loaded);
    }
    if docs.len() > 1 {
        return Err(syntax(format!("{} YAML documents, none of them an Envoy bootstrap or a WasmPlugin", docs.len())));
    }
    // One config among empty documents (a `---` before or after it): the bytes read again
    // would be refused by a reader of one document.
    if let [Doc { number: Some(_), .. }] = docs.as_slice() {
        let doc = docs.swap_remove(0);
        return compile_read(&doc.value, doc.repeats).map(plain).map_err(LintError::Config);
    }
    // The bytes themselves, as Envoy would take them (nothing at all: the compiler's own "no
    // configuration" error), read again once the first reading is let go: the two together
    // would hold twice what the budget allows.
    drop(docs);
    lint_bytes(bytes, format).map(plain)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const CONFIG: &str = "rules: [{name: a, limit: 1/s}]\n";

    /// `anchor` (a YAML value) anchored, then `aliases` aliases of it: small text, much to build.
    fn bomb(anchor: &str, aliases: usize) -> String {
        format!("{CONFIG}x: &a {anchor}\ny: [{}*a]\n", "*a, ".repeat(aliases - 1))
    }

    /// Refused for what `yaml` builds, at the limit of its size.
    #[track_caller]
    fn too_large(yaml: &str, result: Result<Loaded, LintError>) {
        let limit = (8 * yaml.len()).max(1_000_000);
        match result {
            Err(LintError::TooLarge(message)) => {
                assert!(message.contains(&format!("over the limit of {limit} units built for a file of this size")), "{message}");
                assert!(message.contains("(a value 1, an object 20 more, a byte of text 1; 8 per byte of the file, at least 1000000; each alias builds its anchor's values again)"));
            }
            Err(other) => panic!("not refused for its size: {:?}", other.lines()),
            Ok(_) => panic!("read"),
        }
    }

    /// serde_yaml_ng bounds the aliases it follows, not what they build: 270 KB asking for a
    /// billion and a half values (tens of GB) is refused within its budget, in both loaders.
    #[test]
    fn aliases_that_build_more_than_the_file_may_are_refused_at_once() {
        let list = bomb(&format!("[{}0]", "0, ".repeat(49_999)), 30_000);
        assert!(list.len() < 300_000, "{}", list.len());
        // One string, or one key, of 100 KB: few values, much text.
        let text = "k".repeat(100_000);
        let string = bomb(&text, 1_000);
        let key = bomb(&format!("\n  ? {text}\n  : 1"), 1_000);
        let plain = |config| Loaded { config, routes: None, clusters: None, address: None, booleans: Vec::new() };
        for yaml in [&list, &string, &key] {
            for format in [Format::Yaml, Format::Guess] {
                too_large(yaml, lint_bytes(yaml.as_bytes(), format).map(plain));
                too_large(yaml, load_any(yaml.as_bytes(), format));
            }
        }
        // In one document of several, and in a WasmPlugin's config.
        let second = format!("kind: Service\n---\n{list}");
        too_large(&second, load_any(second.as_bytes(), Format::Yaml));
        let plugin = format!(
            "kind: WasmPlugin\nspec:\n  pluginConfig:\n    x: &a [{}0]\n    rules: [{}*a]\n",
            "0, ".repeat(49_999),
            "*a, ".repeat(29_999)
        );
        too_large(&plugin, load_any(plugin.as_bytes(), Format::Yaml));
    }

    /// An object costs its map, which a value's count alone would miss: a hundred `{a}` (each
    /// some 700 bytes built from 4 bytes of text) aliased a thousand times is 100,000 maps,
    /// refused; the densest plain text, `?a,` (such an object in 3 bytes), is read past the
    /// floor, whatever it builds.
    #[test]
    fn objects_are_charged_their_maps_and_plain_text_is_always_read() {
        let maps = bomb(&format!("[{}{{a}}]", "{a}, ".repeat(99)), 1_000);
        too_large(&maps, load_any(maps.as_bytes(), Format::Yaml));
        let plain = format!("{CONFIG}x: [{}?a]\n", "?a,".repeat(60_000));
        let lines = load_any(plain.as_bytes(), Format::Yaml).err().map(|e| e.lines()).unwrap_or_default();
        assert!(matches!(&lines[..], [one] if one.starts_with("x: unknown field")), "{lines:?}");
    }

    /// A file's documents draw on one budget: each is kept, so each in its own would let a file
    /// of many build many times as much.
    #[test]
    fn the_documents_of_a_file_share_its_budget() {
        let doc = format!("a: &a [{}0]\nb: [{}*a]\n---\n", "0, ".repeat(999), "*a, ".repeat(199));
        let few = doc.repeat(3);
        assert!(matches!(load_any(few.as_bytes(), Format::Yaml), Err(LintError::Syntax { .. })), "three read");
        let many = doc.repeat(10);
        too_large(&many, load_any(many.as_bytes(), Format::Yaml));
    }

    /// libyaml's scanner spends time in proportion to the depth on every token: 100,000 levels
    /// took minutes to be refused; now before any parsing, in both loaders.
    #[test]
    fn flow_nesting_past_what_is_read_is_refused_before_parsing() {
        let deep = format!("x: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        for lines in [load_any(deep.as_bytes(), Format::Yaml).err(), lint_bytes(deep.as_bytes(), Format::Yaml).err()]
            .map(|e| e.map(|e| e.lines()).unwrap_or_default())
        {
            assert!(matches!(&lines[..], [one] if one.contains("nest 100000 levels deep; at most 128")), "{lines:?}");
        }
        let maps = format!("x: {}{}\n", "{a: ".repeat(200), "}".repeat(200));
        assert!(load_any(maps.as_bytes(), Format::Yaml).err().unwrap().lines()[0].contains("nest 200 levels"));
        // A quote in a plain scalar opens nothing: the brackets after it count.
        let hidden = format!("x: [a ', {}{}]\n", "[".repeat(200), "]".repeat(200));
        assert!(load_any(hidden.as_bytes(), Format::Yaml).err().unwrap().lines()[0].contains("nest 201 levels"));
    }

    #[test]
    fn text_that_is_not_utf8_is_refused_where_it_stops_being_so() {
        let bytes = b"rules:\n  - name: caf\xe9\n";
        let lines = load_any(bytes, Format::Yaml).err().map(|e| e.lines()).unwrap_or_default();
        assert_eq!(lines, ["not valid UTF-8 text: line 2, byte 21 of the file"]);
    }

    /// An empty document before or after the config (a `---` line) is no second config.
    #[test]
    fn a_config_beside_empty_documents_is_read() {
        for text in [format!("{CONFIG}---\n"), format!("---\n---\n{CONFIG}"), format!("---\n{CONFIG}---\n")] {
            let loaded = load_any(text.as_bytes(), Format::Yaml).unwrap_or_else(|e| panic!("{text:?}: {:?}", e.lines()));
            assert_eq!(loaded.config, lint_bytes(CONFIG.as_bytes(), Format::Yaml).unwrap());
        }
    }

    #[test]
    fn anchors_reused_as_configs_reuse_them_read() {
        let config = "rules:\n  - name: a\n    limit: 5/s\n    match: &api {path: /api/**, methods: [GET, POST]}\n    exempt: &internal {cidrs: [10.0.0.0/8], headers: {x-internal: \"1\"}}\n  - {name: b, limit: 50/min, match: *api, exempt: *internal, identifier: {header: x-api-key}}\n  - {name: c, limit: 1/s, match: *api, exempt: *internal}\n";
        let loaded = load_any(config.as_bytes(), Format::Yaml).unwrap();
        assert_eq!(loaded.config.rules[2].matcher, loaded.config.rules[0].matcher);
        assert_eq!(lint_bytes(config.as_bytes(), Format::Guess).unwrap(), loaded.config);
        let plugin = format!("kind: WasmPlugin\nmetadata: {{name: s, labels: &labels {{app: shop}}}}\nspec:\n  selector: {{matchLabels: *labels}}\n  pluginConfig:\n{}", config.lines().map(|l| format!("    {l}\n")).collect::<String>());
        assert_eq!(load_any(plugin.as_bytes(), Format::Yaml).unwrap().config, loaded.config);
    }
}
