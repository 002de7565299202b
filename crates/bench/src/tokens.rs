//! The cost of checking a token: a full Ed25519 verification against a verified-token cache
//! hit, on the same token, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opsconductor_tokens::{verify, Claims, KeySet, SigningKey, Validation, VerifiedCache};

pub fn run(seconds: u64) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let key = SigningKey::generate();
    let keys = KeySet::from_keys([key.public()]);
    let validation = Validation::new("opsconductor", "opsconductor");
    let claims = Claims::user(
        "opsconductor",
        "opsconductor",
        "user-1",
        "admin",
        1,
        now,
        900,
    );
    let token = key.sign(&claims)?;
    let cache = VerifiedCache::<Claims>::new(100_000);
    cache.insert(&token, Arc::new(claims), now);

    let duration = Duration::from_secs(seconds);
    let per_second = |f: &mut dyn FnMut() -> bool| {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < duration {
            for _ in 0..256 {
                if f() {
                    n += 1;
                }
            }
        }
        n as f64 / started.elapsed().as_secs_f64()
    };
    let full = per_second(&mut || verify(&token, &keys, &validation, now).is_ok());
    let cached = per_second(&mut || cache.get(&token, now).is_some());
    println!(
        "token check, one core: Ed25519 verify {full:.0}/s ({:.1} µs), cache hit {cached:.0}/s ({:.2} µs), speed-up {:.0}x",
        1e6 / full,
        1e6 / cached,
        cached / full
    );
    Ok(())
}
