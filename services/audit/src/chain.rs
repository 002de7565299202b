//! The hash chain: what each event's hash covers, and how a range of events (with the signed
//! checkpoints in it) is verified. Pure functions over events as the API returns them, so the
//! same rules serve the service and anyone re-checking an export (docs/audit.md).
//!
//! `hash(n) = SHA-256(prev_hash(n) ‖ canonical(n))`, `prev_hash(n) = hash(n - 1)`, and 32 zero
//! bytes before the first event. `canonical` is the deterministic proto3 encoding of the
//! `AuditEvent` without `hash` and `record_time`: fields in field-number order, scalars omitted
//! when they hold their default, `actor` and `occur_time` always present, `details` entries
//! sorted by key with both key and value always written.

use opsconductor_api::audit::v1::{AuditCheckpoint, AuditEvent};
use opsconductor_tokens::KeySet;
use prost::encoding::{self, WireType};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// What a checkpoint signature covers besides the sequence and hash.
pub const CHECKPOINT_CONTEXT: &str = "opsconductor.audit.checkpoint.v1";

/// The bytes a checkpoint's signature is made over (after its context).
pub fn checkpoint_payload(sequence: u64, hash: &[u8]) -> Vec<u8> {
    let mut payload = sequence.to_be_bytes().to_vec();
    payload.extend_from_slice(hash);
    payload
}

/// The canonical encoding of `event` (see the module's documentation).
pub fn canonical(event: &AuditEvent) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    let text = |tag: u32, value: &String, buf: &mut Vec<u8>| {
        if !value.is_empty() {
            encoding::string::encode(tag, value, buf);
        }
    };
    text(1, &event.id, &mut buf);
    if event.sequence != 0 {
        encoding::uint64::encode(2, &event.sequence, &mut buf);
    }
    encoding::message::encode(3, &event.actor.clone().unwrap_or_default(), &mut buf);
    text(4, &event.action, &mut buf);
    text(5, &event.resource_type, &mut buf);
    text(6, &event.resource_id, &mut buf);
    encoding::message::encode(7, &event.occur_time.unwrap_or_default(), &mut buf);
    if event.outcome != 0 {
        encoding::int32::encode(8, &event.outcome, &mut buf);
    }
    let mut details: Vec<(&String, &String)> = event.details.iter().collect();
    details.sort();
    for (key, value) in details {
        let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
        encoding::string::encode(1, key, &mut entry);
        encoding::string::encode(2, value, &mut entry);
        encoding::encode_key(9, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(entry.len() as u64, &mut buf);
        buf.extend_from_slice(&entry);
    }
    text(10, &event.request_id, &mut buf);
    if !event.prev_hash.is_empty() {
        encoding::bytes::encode(11, &event.prev_hash, &mut buf);
    }
    text(13, &event.source, &mut buf);
    text(15, &event.publisher, &mut buf);
    buf
}

/// The hash an event with `prev_hash` gets.
pub fn hash(event: &AuditEvent) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(&event.prev_hash);
    hasher.update(canonical(event));
    hasher.finalize().into()
}

/// The first thing wrong in a range of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub sequence: u64,
    pub error: String,
}

/// Checks events one after the other, from an anchor (the sequence and hash just before).
pub struct Verifier<'a> {
    keys: &'a KeySet,
    sequence: u64,
    hash: Vec<u8>,
    pub checked: u64,
    pub checkpoints: u64,
}

impl<'a> Verifier<'a> {
    /// Starts after the event at `sequence` whose hash is `hash` (0 and [`GENESIS`] at the
    /// beginning of the chain).
    pub fn new(keys: &'a KeySet, sequence: u64, hash: &[u8]) -> Verifier<'a> {
        Verifier {
            keys,
            sequence,
            hash: hash.to_vec(),
            checked: 0,
            checkpoints: 0,
        }
    }

    /// The sequence and hash of the last event checked.
    pub fn head(&self) -> (u64, &[u8]) {
        (self.sequence, &self.hash)
    }

    /// Checks the next event: it follows the last one, links to its hash, and its own hash is
    /// what its content gives.
    pub fn event(&mut self, event: &AuditEvent) -> Result<(), Broken> {
        let expected = self.sequence + 1;
        let broken = |error: String| Broken {
            sequence: expected,
            error,
        };
        if event.sequence != expected {
            return Err(broken(format!(
                "event {expected} is missing (the next one is {})",
                event.sequence
            )));
        }
        if event.prev_hash != self.hash {
            return Err(broken(format!(
                "event {expected} does not link to the hash of event {}",
                self.sequence
            )));
        }
        let computed = hash(event);
        if event.hash != computed {
            return Err(broken(format!(
                "event {expected} was changed: its content does not give its hash"
            )));
        }
        self.sequence = expected;
        self.hash = computed.to_vec();
        self.checked += 1;
        Ok(())
    }

    /// Checks a checkpoint at the last event checked: signed by a known key, and naming the
    /// hash the chain gives (a chain recomputed after an edit gives another).
    pub fn checkpoint(&mut self, checkpoint: &AuditCheckpoint) -> Result<(), Broken> {
        let broken = |error: String| Broken {
            sequence: checkpoint.sequence,
            error,
        };
        if checkpoint.sequence != self.sequence {
            return Err(broken(format!(
                "checkpoint {} checked at event {}",
                checkpoint.sequence, self.sequence
            )));
        }
        self.keys
            .verify_detached(
                &checkpoint.kid,
                CHECKPOINT_CONTEXT,
                &checkpoint_payload(checkpoint.sequence, &checkpoint.hash),
                &checkpoint.signature,
            )
            .map_err(|e| broken(format!("checkpoint {}: {e}", checkpoint.sequence)))?;
        if checkpoint.hash != self.hash {
            return Err(broken(format!(
                "the chain up to event {} was rewritten after checkpoint {} was signed",
                checkpoint.sequence, checkpoint.sequence
            )));
        }
        self.checkpoints += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsconductor_api::common::v1::Actor;
    use opsconductor_tokens::SigningKey;
    use prost::Message;

    fn event(sequence: u64, prev: &[u8]) -> AuditEvent {
        let mut e = AuditEvent {
            id: format!("id-{sequence}"),
            sequence,
            actor: Some(Actor {
                user_id: "u".into(),
                service_id: String::new(),
            }),
            action: "user.create".into(),
            occur_time: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 5,
            }),
            outcome: 1,
            details: [("b", "2"), ("a", ""), ("c", "3")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            prev_hash: prev.to_vec(),
            source: "user".into(),
            ..Default::default()
        };
        e.hash = hash(&e).to_vec();
        e
    }

    #[test]
    fn the_encoding_is_protobuf_and_deterministic() {
        let e = event(1, &GENESIS);
        let bytes = canonical(&e);
        // Valid protobuf: it decodes to the event without hash and record time.
        let mut decoded = AuditEvent::decode(bytes.as_slice()).unwrap();
        decoded.hash = e.hash.clone();
        assert_eq!(decoded, e);
        // Map order does not matter; every entry's value is written, even an empty one.
        let mut again = e.clone();
        let mut entries: Vec<_> = e.details.clone().into_iter().collect();
        entries.sort();
        entries.reverse();
        again.details = std::collections::HashMap::with_capacity(1);
        again.details.extend(entries);
        assert_eq!(canonical(&again), bytes);
        let entry_a = [0x4a, 0x05, 0x0a, 0x01, b'a', 0x12, 0x00];
        assert!(bytes.windows(7).any(|w| w == entry_a), "{bytes:02x?}");
    }

    #[test]
    fn any_change_breaks_the_chain_and_a_rewrite_breaks_the_checkpoint() {
        let key = SigningKey::generate();
        let keys = KeySet::from_keys([key.public()]);
        let first = event(1, &GENESIS);
        let second = event(2, &first.hash);
        let third = event(3, &second.hash);
        let signed = |e: &AuditEvent| AuditCheckpoint {
            sequence: e.sequence,
            hash: e.hash.clone(),
            kid: key.kid().to_string(),
            signature: key
                .sign_detached(CHECKPOINT_CONTEXT, &checkpoint_payload(e.sequence, &e.hash)),
            sign_time: None,
        };
        let mut v = Verifier::new(&keys, 0, &GENESIS);
        for e in [&first, &second, &third] {
            v.event(e).unwrap();
        }
        v.checkpoint(&signed(&third)).unwrap();
        assert_eq!((v.checked, v.checkpoints), (3, 1));

        // An edited detail.
        let mut edited = second.clone();
        edited.details.insert("a".into(), "x".into());
        let mut v = Verifier::new(&keys, 1, &first.hash);
        assert_eq!(v.event(&edited).unwrap_err().sequence, 2);
        // A removed event.
        let mut v = Verifier::new(&keys, 1, &first.hash);
        assert!(v.event(&third).unwrap_err().error.contains("missing"));
        // The edit with every later hash recomputed: only the signed checkpoint tells.
        let mut rewritten_second = edited.clone();
        rewritten_second.hash = hash(&rewritten_second).to_vec();
        let mut rewritten_third = third.clone();
        rewritten_third.prev_hash = rewritten_second.hash.clone();
        rewritten_third.hash = hash(&rewritten_third).to_vec();
        let mut v = Verifier::new(&keys, 1, &first.hash);
        v.event(&rewritten_second).unwrap();
        v.event(&rewritten_third).unwrap();
        let err = v.checkpoint(&signed(&third)).unwrap_err();
        assert_eq!(err.sequence, 3);
        assert!(err.error.contains("rewritten"), "{err:?}");
        // A forged checkpoint over the rewrite.
        let forger = SigningKey::generate();
        let mut forged = signed(&rewritten_third);
        forged.signature = forger.sign_detached(
            CHECKPOINT_CONTEXT,
            &checkpoint_payload(3, &rewritten_third.hash),
        );
        assert!(v.checkpoint(&forged).is_err());
    }
}
