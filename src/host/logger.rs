//! The `log` crate's records, written to the host's log (`proxy_log`) at their level.

use super::abi::{self, LogLevel};

struct HostLog;

static HOST_LOG: HostLog = HostLog;

/// Sends the `log` crate's records at `level` and above to the host (once per VM: a second
/// call only sets the level).
pub(super) fn init(level: LogLevel) {
    let _ = log::set_logger(&HOST_LOG);
    log::set_max_level(match level {
        LogLevel::Trace => log::LevelFilter::Trace,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Critical => log::LevelFilter::Off,
    });
}

impl log::Log for HostLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}
