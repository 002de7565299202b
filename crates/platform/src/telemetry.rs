//! Structured logs: `OPSCONDUCTOR_LOG` filters (RUST_LOG syntax), `OPSCONDUCTOR_LOG_FORMAT`
//! picks `text` (default) or `json`.

use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, Env};

/// Installs the global subscriber once; later calls are no-ops.
pub fn init(env: &Env) -> Result<(), ConfigError> {
    let filter = env
        .get("OPSCONDUCTOR_LOG")
        .unwrap_or_else(|| "info".to_string());
    // lapin logs a returned (unroutable) message with its whole body; bodies may carry
    // destinations or details no log should hold, and the publisher reports the failure itself.
    let quiet = if filter.contains("lapin::returned_messages") {
        filter.clone()
    } else {
        format!("{filter},lapin::returned_messages=off")
    };
    let filter = EnvFilter::try_new(&quiet)
        .map_err(|e| ConfigError::invalid("OPSCONDUCTOR_LOG", &filter, e))?;
    let format = env
        .get("OPSCONDUCTOR_LOG_FORMAT")
        .unwrap_or_else(|| "text".to_string());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format.as_str() {
        "text" => builder.try_init(),
        "json" => builder.json().flatten_event(true).try_init(),
        other => {
            return Err(ConfigError::invalid(
                "OPSCONDUCTOR_LOG_FORMAT",
                other,
                "must be text or json",
            ))
        }
    };
    // Already installed (tests start many services in one process): keep the first.
    let _ = result;
    Ok(())
}
