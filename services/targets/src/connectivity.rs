//! The connectivity test: resolve, then open a TCP connection within a timeout.

use std::time::{Duration, Instant};

use opsconductor_api::targets::v1::TestTargetConnectivityResponse;
use opsconductor_platform::time::{from_duration, now_micros, to_timestamp};
use tokio::net::TcpStream;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Tries every resolved address in turn until one connects or the time is up. A failure is a
/// result (reachable = false, with the reason), not an error of the call.
pub async fn probe(address: &str, port: u16, timeout: Duration) -> TestTargetConnectivityResponse {
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, connect(address, port)).await;
    let latency = started.elapsed();
    let (reachable, resolved_address, error) = match outcome {
        Ok(Ok(addr)) => (true, addr, String::new()),
        Ok(Err((addr, e))) => (false, addr, e),
        Err(_) => (
            false,
            String::new(),
            format!("timed out after {} ms", timeout.as_millis()),
        ),
    };
    TestTargetConnectivityResponse {
        reachable,
        resolved_address,
        latency: Some(from_duration(latency)),
        error,
        check_time: Some(to_timestamp(now_micros())),
    }
}

async fn connect(address: &str, port: u16) -> Result<String, (String, String)> {
    let addrs = tokio::net::lookup_host((address, port))
        .await
        .map_err(|e| (String::new(), format!("cannot resolve {address}: {e}")))?;
    let mut last = (String::new(), format!("{address} resolved to no address"));
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(_) => return Ok(addr.to_string()),
            Err(e) => last = (addr.to_string(), format!("connect to {addr}: {e}")),
        }
    }
    Err(last)
}
