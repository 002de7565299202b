//! Who published a message (DESIGN §9: the broker is not a trust boundary). Anyone who can
//! publish to an exchange — `guest` under `opsconductor up` — could otherwise cancel runs, feed
//! `WatchRun` streams or have people notified. So every message a service publishes carries
//! the service's certificate (its message key, certified by the auth service for its identity
//! when it last exchanged its secret) and proof that the key signed the message's type, id and
//! body. A consumer checks the certificate against the auth service's JWKS, the proof against
//! the certified key, and the producer against the services its queue accepts, before any
//! handler runs; anything else is dead-lettered with the reason and counted
//! (`opsconductor_messaging_forgeries_refused_total`).
//!
//! An Ed25519 signature per message would cost a publisher and its consumers more CPU than the
//! broker's own work (it halved throughput). So a publisher signs a batch of up to [`BATCH`]
//! messages at once: one signature over the root of a Merkle tree of their hashes, each
//! message carrying its position, the sibling hashes up to the root, and that signature. A
//! consumer hashes its way up (a few SHA-256 blocks) and checks each root's signature once.
//!
//! Messages moved along by a consumer (retries, dead letters) and replayed dead letters keep
//! their producer's headers and are not signed again, so they prove the same producer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::future::{BoxFuture, FutureExt};
use opsconductor_platform::auth::{KeySource, MessageSigning, TokenSource};
use opsconductor_tokens::ProducerCertificate;
use sha2::{Digest, Sha256};

use crate::broker::Broker;
use crate::handler::{Dispatch, Outcome, RawMessage};
use crate::message::headers;
use crate::metrics::Metrics;

/// Never valid as a token, a certificate or a revocation signature.
const CONTEXT: &str = "opsconductor.producer-message.v1";
/// Clock skew allowed between a producer and a consumer, and at a certificate's ends.
const SKEW_SECS: u64 = 60;
/// Verified certificates kept (one per producing replica and token lifetime).
const CACHE: usize = 1024;
/// Verified batch roots kept.
const ROOTS: usize = 4096;

/// Where a service's message key and its certificate come from: its token source.
pub trait MessageSigner: Send + Sync + 'static {
    fn signing(&self) -> BoxFuture<'_, Result<MessageSigning, String>>;
}

impl MessageSigner for TokenSource {
    fn signing(&self) -> BoxFuture<'_, Result<MessageSigning, String>> {
        async move { self.message_signing().await.map_err(|e| e.to_string()) }.boxed()
    }
}

/// Which services a queue takes messages from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Producers {
    /// Any service identity the auth service certified (audit events: every service audits).
    #[default]
    AnyService,
    /// Only these service ids.
    Only(Vec<String>),
}

impl Producers {
    pub fn only(services: &[&str]) -> Producers {
        Producers::Only(services.iter().map(|s| s.to_string()).collect())
    }

    fn admits(&self, service: &str) -> bool {
        match self {
            Producers::AnyService => true,
            Producers::Only(allowed) => allowed.iter().any(|a| a == service),
        }
    }
}

/// How a service signs what it publishes and checks what it consumes.
#[derive(Clone)]
pub struct ProducerTrust {
    signer: Arc<dyn MessageSigner>,
    keys: Arc<dyn KeySource>,
    certificates: Arc<Mutex<HashMap<String, Arc<ProducerCertificate>>>>,
    /// Roots whose signature was checked, by a digest of the certificate, time and root.
    roots: Arc<Mutex<HashSet<Hash>>>,
}

impl ProducerTrust {
    /// Signs with `signer`'s key; accepts certificates issued by a key of `keys` (the auth
    /// service's JWKS).
    pub fn new(signer: Arc<dyn MessageSigner>, keys: Arc<dyn KeySource>) -> ProducerTrust {
        ProducerTrust {
            signer,
            keys,
            certificates: Arc::default(),
            roots: Arc::default(),
        }
    }

    pub(crate) async fn signing(&self) -> Result<MessageSigning, String> {
        self.signer.signing().await
    }

    /// The certificate, verified once and cached; `Ok(None)` when its issuer's key is not
    /// known yet (the caller looks for it and asks again).
    fn certificate(&self, text: &str) -> Result<Option<Arc<ProducerCertificate>>, String> {
        if let Some(known) = self.cache().get(text) {
            return Ok(Some(known.clone()));
        }
        let keys = self.keys.keys();
        if let Some((kid, _)) = ProducerCertificate::unverified_issuer(text) {
            if !keys.contains(&kid) {
                return Ok(None);
            }
        }
        let certificate = Arc::new(
            ProducerCertificate::verify(text, &keys)
                .map_err(|e| format!("the producer certificate is refused: {e}"))?,
        );
        let mut cache = self.cache();
        if cache.len() >= CACHE {
            cache.clear();
        }
        cache.insert(text.to_string(), certificate.clone());
        Ok(Some(certificate))
    }

    /// Looks for the key that issued `certificate` (a rotation since the last look).
    async fn refresh_for(&self, certificate: &str) {
        if let Some((kid, issued_at)) = ProducerCertificate::unverified_issuer(certificate) {
            if let Err(error) = self.keys.refresh(&kid, issued_at).await {
                tracing::debug!(%error, "cannot refresh the keys to check a certificate");
            }
        }
    }

    fn roots(&self) -> std::sync::MutexGuard<'_, HashSet<Hash>> {
        self.roots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ProducerCertificate>>> {
        self.certificates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The service that published `message`, if it proves it; `Ok(None)` when the key that
    /// issued its certificate is not known yet. Never waits, so a consumer hands deliveries on
    /// in the order they came (the audit chain relies on it).
    fn check(&self, message: &RawMessage, now: u64) -> Result<Option<String>, String> {
        let header = |name| {
            message
                .meta
                .headers
                .get(name)
                .filter(|v: &&String| !v.is_empty())
        };
        let (Some(certificate_text), Some(signature)) = (
            header(headers::PRODUCER_CERTIFICATE),
            header(headers::PRODUCER_SIGNATURE),
        ) else {
            return Err("the message is not signed by its producer".into());
        };
        let leaf = leaf(
            &message.meta.message_type,
            &message.meta.message_id,
            &message.body,
        );
        let proof = proof(signature, leaf).ok_or("the producer signature is malformed")?;
        let Some(certificate) = self.certificate(certificate_text)? else {
            return Ok(None);
        };
        if proof.signed_at > now.saturating_add(SKEW_SECS) {
            return Err("the message says it was signed in the future".into());
        }
        if proof.signed_at > certificate.not_after.saturating_add(SKEW_SECS)
            || proof.signed_at.saturating_add(SKEW_SECS) < certificate.issued_at
        {
            return Err("the message was signed outside its certificate's validity".into());
        }
        // Each root's signature is checked once: the batch's other messages only hash up to it.
        let mut key = Sha256::new();
        key.update(certificate_text.as_bytes());
        key.update(root_payload(proof.signed_at, &proof.root));
        let key: Hash = key.finalize().into();
        if !self.roots().contains(&key) {
            certificate
                .verify_detached(
                    CONTEXT,
                    &root_payload(proof.signed_at, &proof.root),
                    proof.signature,
                )
                .map_err(|e| format!("the producer signature is refused: {e}"))?;
            let mut roots = self.roots();
            if roots.len() >= ROOTS {
                roots.clear();
            }
            roots.insert(key);
        }
        Ok(Some(certificate.service.clone()))
    }

    /// [`ProducerTrust::check`], looking for an issuer's key not known yet once.
    pub(crate) async fn producer(&self, message: &RawMessage, now: u64) -> Result<String, String> {
        if let Some(service) = self.check(message, now)? {
            return Ok(service);
        }
        if let Some(certificate) = message.meta.headers.get(headers::PRODUCER_CERTIFICATE) {
            self.refresh_for(certificate).await;
        }
        self.check(message, now)?.ok_or_else(|| {
            "the producer certificate is refused: its issuer's key is unknown".into()
        })
    }
}

/// Messages signed together at most (a tree 6 levels high).
pub(crate) const BATCH: usize = 64;
/// Domain separation of the tree's hashes: a leaf can never pass for a node, nor padding for
/// either.
const LEAF: u8 = 0;
const NODE: u8 = 1;
const PAD: u8 = 2;
/// Deepest tree a consumer accepts (65,536 messages).
const MAX_DEPTH: usize = 16;

type Hash = [u8; 32];

/// A message's leaf: its type (so a body cannot pass for another message), its id (so a
/// replay under a new id is not a new message) and its body.
fn leaf(message_type: &str, message_id: &str, body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF]);
    for part in [message_type.as_bytes(), message_id.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(body);
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// What the key signs: when, and the root.
fn root_payload(signed_at: u64, root: &Hash) -> Vec<u8> {
    let mut payload = signed_at.to_be_bytes().to_vec();
    payload.extend_from_slice(root);
    payload
}

/// A message to sign: its type, id and body.
pub(crate) struct Unsigned<'a> {
    pub message_type: &'a str,
    pub message_id: &'a str,
    pub body: &'a [u8],
}

/// The two headers that prove `signing`'s service published each of `messages` (one
/// signature for them all), in order.
pub(crate) fn sign_batch(
    signing: &MessageSigning,
    messages: &[Unsigned<'_>],
    now: u64,
) -> Vec<[(&'static str, String); 2]> {
    let mut level: Vec<Hash> = messages
        .iter()
        .map(|m| leaf(m.message_type, m.message_id, m.body))
        .collect();
    let width = level.len().max(1).next_power_of_two();
    let pad: Hash = Sha256::digest([PAD]).into();
    level.resize(width, pad);
    let mut levels = vec![level];
    while levels.last().is_some_and(|l| l.len() > 1) {
        let below = levels.last().map(Vec::as_slice).unwrap_or_default();
        let above: Vec<Hash> = below.chunks(2).map(|p| node(&p[0], &p[1])).collect();
        levels.push(above);
    }
    let root = levels
        .last()
        .and_then(|l| l.first())
        .copied()
        .unwrap_or(pad);
    let signature = signing
        .key
        .sign_detached(CONTEXT, &root_payload(now, &root));
    let certificate = signing.certificate.to_string();
    (0..messages.len())
        .map(|index| {
            let mut path = Vec::with_capacity(32 * levels.len());
            let mut at = index;
            for level in &levels[..levels.len() - 1] {
                path.extend_from_slice(&level[at ^ 1]);
                at >>= 1;
            }
            [
                (headers::PRODUCER_CERTIFICATE, certificate.clone()),
                (
                    headers::PRODUCER_SIGNATURE,
                    format!(
                        "{now}.{index}.{}.{signature}",
                        URL_SAFE_NO_PAD.encode(&path)
                    ),
                ),
            ]
        })
        .collect()
}

/// A message's proof: when it was signed, the root its leaf climbs to, and the signature.
struct Proof<'a> {
    signed_at: u64,
    root: Hash,
    signature: &'a str,
}

fn proof<'a>(header: &'a str, leaf: Hash) -> Option<Proof<'a>> {
    let mut parts = header.split('.');
    let (Some(signed_at), Some(index), Some(path), Some(signature), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let path = URL_SAFE_NO_PAD.decode(path).ok()?;
    if path.len() % 32 != 0 || path.len() / 32 > MAX_DEPTH {
        return None;
    }
    let mut at: u64 = index.parse().ok()?;
    if at >= 1 << (path.len() / 32) {
        return None;
    }
    let mut root = leaf;
    for sibling in path.chunks(32) {
        let sibling: Hash = sibling.try_into().ok()?;
        root = if at & 1 == 0 {
            node(&root, &sibling)
        } else {
            node(&sibling, &root)
        };
        at >>= 1;
    }
    Some(Proof {
        signed_at: signed_at.parse().ok()?,
        root,
        signature,
    })
}

/// Hands on only deliveries whose producer proves itself and is one `producers` admits, with
/// the producer in [`crate::MessageMeta::producer`].
pub(crate) struct Produced {
    pub inner: Arc<dyn Dispatch>,
    pub trust: ProducerTrust,
    pub producers: Producers,
    pub broker: Broker,
}

impl Produced {
    /// Hands `message` on if `checked` admits it, else dead-letters it with the reason.
    fn decide(
        &self,
        mut message: RawMessage,
        checked: Result<String, String>,
    ) -> BoxFuture<'static, Outcome> {
        let admitted = checked.and_then(|service| {
            if self.producers.admits(&service) {
                Ok(service)
            } else {
                Err(format!(
                    "{service:?} may not publish {} here",
                    message.meta.message_type
                ))
            }
        });
        match admitted {
            Ok(service) => {
                message.meta.producer = Some(service);
                self.inner.dispatch(&message)
            }
            Err(reason) => {
                Metrics::add(&self.broker.counters().forgeries_refused, 1);
                tracing::warn!(
                    %reason,
                    message_type = %message.meta.message_type,
                    publisher = message.meta.user_id.as_deref().unwrap_or(""),
                    "message refused: its producer is not proven"
                );
                futures::future::ready(Outcome::DeadLetter(reason)).boxed()
            }
        }
    }
}

impl Dispatch for Produced {
    fn dispatch(&self, message: &RawMessage) -> BoxFuture<'static, Outcome> {
        let now = opsconductor_platform::time::now_secs();
        match self.trust.check(message, now) {
            // Decided now: handed on at once, in delivery order.
            Ok(Some(service)) => self.decide(message.clone(), Ok(service)),
            Err(reason) => self.decide(message.clone(), Err(reason)),
            // The issuer's key is new (a rotation): look for it first. Deliveries behind this
            // one may be handed on before it, as after a failed attempt.
            Ok(None) => {
                let this = Produced {
                    inner: self.inner.clone(),
                    trust: self.trust.clone(),
                    producers: self.producers.clone(),
                    broker: self.broker.clone(),
                };
                let message = message.clone();
                async move {
                    let checked = this.trust.producer(&message, now).await;
                    this.decide(message, checked).await
                }
                .boxed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsconductor_tokens::SigningKey;

    fn signing() -> MessageSigning {
        MessageSigning {
            key: Arc::new(SigningKey::generate()),
            certificate: "cert".into(),
        }
    }

    #[test]
    fn every_message_of_a_batch_climbs_to_the_signed_root_and_no_other_does() {
        let signing = signing();
        let key = signing.key.public().key;
        for n in [1usize, 2, 3, 5, 64] {
            let ids: Vec<String> = (0..n).map(|i| format!("id-{i}")).collect();
            let batch: Vec<Unsigned<'_>> = ids
                .iter()
                .map(|id| Unsigned {
                    message_type: "t",
                    message_id: id,
                    body: id.as_bytes(),
                })
                .collect();
            let signed = sign_batch(&signing, &batch, 1000);
            let mut roots = HashSet::new();
            for (m, headers) in batch.iter().zip(&signed) {
                let p = proof(&headers[1].1, leaf(m.message_type, m.message_id, m.body)).unwrap();
                assert_eq!(p.signed_at, 1000);
                roots.insert(p.root);
                let cert = ProducerCertificate {
                    service: "s".into(),
                    key,
                    issued_at: 0,
                    not_after: 2000,
                };
                cert.verify_detached(CONTEXT, &root_payload(1000, &p.root), p.signature)
                    .unwrap();
                // Another body, type or id at the same position climbs elsewhere.
                for other in [
                    leaf(m.message_type, m.message_id, b"other"),
                    leaf("u", m.message_id, m.body),
                    leaf(m.message_type, "other", m.body),
                ] {
                    assert_ne!(proof(&headers[1].1, other).unwrap().root, p.root);
                }
            }
            assert_eq!(roots.len(), 1, "{n} messages, one root");
        }
    }

    #[test]
    fn malformed_proofs_are_refused() {
        let l = leaf("t", "i", b"b");
        for bad in [
            "",
            "1",
            "1.0",
            "1.0.",
            "x.0..sig",
            "1.x..sig",
            "1.1..sig",     // index beyond a one-leaf tree
            "1.0.AAAA.sig", // a path that is not whole hashes
            "1.0..sig.extra",
        ] {
            assert!(proof(bad, l).is_none(), "{bad:?}");
        }
        let deep = URL_SAFE_NO_PAD.encode(vec![0u8; 32 * (MAX_DEPTH + 1)]);
        assert!(proof(&format!("1.0.{deep}.sig"), l).is_none());
        assert!(proof("1.0..sig", l).is_some());
    }

    #[test]
    fn lengths_keep_the_type_and_id_apart() {
        assert_ne!(leaf("a", "bc", b"x"), leaf("ab", "c", b"x"));
        assert_ne!(leaf("a", "b", b"c"), leaf("a", "bc", b""));
    }
}
