//! One upstream service: its replicas, each a lazily connected channel with a circuit breaker,
//! taken in turn, open ones skipped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Uri;
use tonic::transport::Channel;

use super::breaker::{Admission, Breaker, BreakerSettings, BreakerState};

pub(crate) struct Replica {
    pub uri: String,
    pub channel: Channel,
    /// None for a channel handed in whole (it may balance inside; nothing to break per replica).
    pub breaker: Option<Breaker>,
}

/// Cheap to clone: clones share the replicas and their breakers.
#[derive(Clone)]
pub struct Upstream {
    name: Arc<str>,
    replicas: Arc<[Replica]>,
    next: Arc<AtomicUsize>,
}

impl Upstream {
    /// One channel, used as it is (no breaker).
    pub fn single(channel: Channel) -> Upstream {
        Upstream {
            name: Arc::from("upstream"),
            replicas: Arc::from(vec![Replica {
                uri: String::new(),
                channel,
                breaker: None,
            }]),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// `name`'s replicas at `uris`, each with a breaker.
    pub fn replicas(
        name: &str,
        uris: &[Uri],
        connect: impl Fn(&Uri) -> Channel,
        breaker: BreakerSettings,
    ) -> Upstream {
        Upstream {
            name: Arc::from(name),
            replicas: uris
                .iter()
                .map(|uri| Replica {
                    uri: uri.to_string(),
                    channel: connect(uri),
                    breaker: Some(Breaker::new(breaker)),
                })
                .collect(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// `request` to the next replica, without retries or deadlines.
    pub(crate) async fn call_once(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, tonic::transport::Error> {
        use tower::{Service, ServiceExt};
        let n = self.replicas.len();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut channel = self.replicas[i].channel.clone();
        channel.ready().await?;
        channel.call(request).await
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next replica whose breaker admits a call (with its index), or how long until one
    /// might. `avoid` (the replica a retry follows) is taken only when no other admits it: a
    /// retry goes elsewhere even while concurrent calls move the turn.
    pub(crate) fn pick(
        &self,
        now: Instant,
        avoid: Option<usize>,
    ) -> Result<(usize, &Replica), Duration> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut wait = Duration::MAX;
        let order = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| Some(*i) != avoid)
            .chain(avoid.filter(|i| *i < n));
        for i in order {
            let replica = &self.replicas[i];
            match replica.breaker.as_ref().map(|b| b.admit(now)) {
                None | Some(Admission::Admit) => return Ok((i, replica)),
                Some(Admission::Refuse(left)) => wait = wait.min(left),
            }
        }
        Err(wait)
    }

    /// Each replica and whether its breaker is open (half-open counts as open).
    pub fn breaker_states(&self) -> Vec<(String, bool)> {
        self.replicas
            .iter()
            .filter_map(|r| {
                let state = r.breaker.as_ref()?.state();
                Some((r.uri.clone(), state != BreakerState::Closed))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(n: usize) -> Upstream {
        let uris: Vec<Uri> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i).parse().unwrap())
            .collect();
        Upstream::replicas(
            "test",
            &uris,
            |uri| Channel::builder(uri.clone()).connect_lazy(),
            BreakerSettings::default(),
        )
    }

    #[tokio::test]
    async fn a_retry_goes_to_another_replica_whatever_the_turn() {
        let up = upstream(2);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(up.pick(now, Some(0)).unwrap().0, 1);
            assert_eq!(up.pick(now, Some(1)).unwrap().0, 0);
        }
        // Taken in turn otherwise.
        let first = up.pick(now, None).unwrap().0;
        assert_ne!(up.pick(now, None).unwrap().0, first);
        // With one replica, the retry goes back to it.
        let one = upstream(1);
        assert_eq!(one.pick(now, Some(0)).unwrap().0, 0);
    }
}
