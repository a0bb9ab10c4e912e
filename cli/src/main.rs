//! `sluice`: the filter's own config compiler on the command line: `lint` checks a config,
//! `explain` shows which rules a request meets and what the config can never do.
//!
//! Exit codes: 0 the config is valid; 1 the config is invalid (every error printed to stderr,
//! one per line); 2 bad usage or an unreadable file.

mod analysis;
mod deploy;
mod explain;
mod load;
mod trust;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use explain::CliRequest;
use load::{load_any, Format, Loaded};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Check sluice rate-limit plugin configs with the filter's own compiler")]
#[command(arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compile a plugin config (YAML or JSON) and print it normalized as JSON, defaults filled
    /// in; on errors print every one of them (path: "text": what was expected) and exit 1.
    /// Warnings (to stderr, exit 0) name every place the config trusts a value the client
    /// sends: a header, query parameter or cookie that exempts, costs, opts out or identifies.
    Lint {
        /// The config file: .yaml/.yml is read as YAML, .json as JSON, anything else as JSON
        /// if it parses, else YAML. "-" reads standard input. An Envoy bootstrap or an Istio
        /// WasmPlugin is checked for the plugin config it carries.
        file: PathBuf,
    },
    /// Show which rules a request meets and why, who it is counted against (identity, hash,
    /// shared-data slots, Redis key), and what static analysis finds in the config: rules that
    /// can never match, never limit, or are shadowed by another rule. Without --path, only the
    /// analysis is printed.
    #[command(
        after_help = "Example:\n  sluice explain filter-config/api.yaml --method POST --path /v1/orders -H 'x-api-key: k1' --ip 203.0.113.7"
    )]
    Explain {
        /// A plugin config (YAML or JSON), an Envoy bootstrap with the sluice filter (its route
        /// names are then checked too), or an Istio WasmPlugin (its pluginConfig).
        file: PathBuf,
        /// Request method.
        #[arg(short = 'X', long, requires = "path")]
        method: Option<String>,
        /// Request path, query string included (e.g. /login?user=alice).
        #[arg(long)]
        path: Option<String>,
        /// A request header, as in curl: -H 'x-api-key: k1'. Repeatable.
        #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", requires = "path")]
        headers: Vec<String>,
        /// The client address as Envoy sees it (source.address).
        #[arg(long, requires = "path")]
        ip: Option<IpAddr>,
        /// The Envoy route name the request would take (xds.route_name).
        #[arg(long, requires = "path")]
        route: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Lint { file } => lint(&file),
        Command::Explain { file, method, path, headers, ip, route, json } => {
            let request = match path {
                Some(path) => {
                    let mut parsed = Vec::with_capacity(headers.len());
                    for h in &headers {
                        match CliRequest::parse_header(h) {
                            Ok(pair) => parsed.push(pair),
                            Err(e) => {
                                eprintln!("sluice: {e}");
                                return ExitCode::from(2);
                            }
                        }
                    }
                    // As sent: a method's case reaches the filter (HTTP/2 lets a client send `get`).
                    let method = method.unwrap_or_else(|| "GET".into());
                    Some(CliRequest { method, path, headers: parsed, ip, route })
                }
                None => None,
            };
            explain_file(&file, request.as_ref(), json)
        }
    }
}

fn shown(file: &Path) -> String {
    if file.as_os_str() == "-" {
        "<stdin>".to_string()
    } else {
        file.display().to_string()
    }
}

fn print_errors(shown: &str, lines: &[String]) -> ExitCode {
    let mut stderr = std::io::stderr().lock();
    for line in lines {
        let _ = writeln!(stderr, "{line}");
    }
    let n = lines.len();
    let _ = writeln!(stderr, "sluice: {shown}: {n} error{}", if n == 1 { "" } else { "s" });
    ExitCode::from(1)
}

fn explain_file(file: &Path, request: Option<&CliRequest>, json: bool) -> ExitCode {
    let shown = shown(file);
    let bytes = match read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sluice: cannot read {shown}: {e}");
            return ExitCode::from(2);
        }
    };
    let format = if file.as_os_str() == "-" { Format::Guess } else { Format::of(file) };
    let loaded = match load_any(&bytes, format) {
        Ok(loaded) => loaded,
        Err(err) => return print_errors(&shown, &err.lines()),
    };
    let report = explain::explain(loaded.config, request, loaded.routes.as_deref());
    let text = if json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => j + "\n",
            Err(e) => {
                eprintln!("sluice: cannot print the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        explain::render(&report)
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

fn read(file: &Path) -> std::io::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(file)
    }
}

fn lint(file: &Path) -> ExitCode {
    let shown = shown(file);
    let bytes = match read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sluice: cannot read {shown}: {e}");
            return ExitCode::from(2);
        }
    };
    let format = if file.as_os_str() == "-" { Format::Guess } else { Format::of(file) };
    // A bootstrap or WasmPlugin is linted for the plugin config it carries.
    match load_any(&bytes, format) {
        Ok(Loaded { config, address, booleans, clusters, .. }) => match serde_json::to_string_pretty(&config) {
            Ok(json) => {
                let mut err = std::io::stderr().lock();
                let from_bootstrap = address.map(|(remote, hops)| trust::address_warnings(&config, remote, hops));
                let warnings = booleans
                    .into_iter()
                    .chain(deploy::warnings(&config, clusters.as_deref()))
                    .chain(trust::warnings(&config))
                    .chain(from_bootstrap.into_iter().flatten());
                for w in warnings {
                    let _ = writeln!(err, "warning: {w}");
                }
                // What explain proves about the config alone (no request, no bootstrap routes).
                for f in analysis::analyze(&config, None) {
                    let _ = writeln!(err, "warning: rule {:?}: {}: {}", f.rule, f.kind, f.message);
                }
                let mut out = std::io::stdout().lock();
                // A closed pipe (`sluice lint f | head`) is not a lint failure.
                let _ = writeln!(out, "{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: cannot print the normalized config: {e}");
                ExitCode::from(2)
            }
        },
        Err(err) => print_errors(&shown, &err.lines()),
    }
}
