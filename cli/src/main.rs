//! `sluice`: the filter's own config compiler on the command line.
//!
//! Exit codes: 0 the config is valid; 1 the config is invalid (every error printed to stderr,
//! one per line); 2 bad usage or an unreadable file.

mod load;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use load::{lint_bytes, Format};

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
    Lint {
        /// The config file: .yaml/.yml is read as YAML, .json as JSON, anything else as JSON
        /// if it parses, else YAML. "-" reads standard input.
        file: PathBuf,
    },
    // `Explain { .. }` (which rules a request meets and why) is added here later.
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Lint { file } => lint(&file),
    }
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
    let shown = if file.as_os_str() == "-" { "<stdin>".to_string() } else { file.display().to_string() };
    let bytes = match read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("sluice: cannot read {shown}: {e}");
            return ExitCode::from(2);
        }
    };
    let format = if file.as_os_str() == "-" { Format::Guess } else { Format::of(file) };
    match lint_bytes(&bytes, format) {
        Ok(config) => match serde_json::to_string_pretty(&config) {
            Ok(json) => {
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
        Err(err) => {
            let lines = err.lines();
            let mut stderr = std::io::stderr().lock();
            for line in &lines {
                let _ = writeln!(stderr, "{line}");
            }
            let n = lines.len();
            let _ = writeln!(stderr, "sluice: {shown}: {n} error{}", if n == 1 { "" } else { "s" });
            ExitCode::from(1)
        }
    }
}
