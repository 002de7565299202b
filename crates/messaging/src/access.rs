//! Least privilege on the broker (DESIGN §9): what a service does there ([`BrokerUse`]) decides
//! the permissions of its broker account — RabbitMQ's `configure` / `write` / `read` patterns
//! over exchange and queue names — and [`definitions`] writes a definitions file that creates
//! every account and the whole topology, for RabbitMQ to load at boot.
//!
//! With such accounts the services run with `OPSCONDUCTOR_AMQP_DECLARE=verify`: the topology
//! exists before they start, they only check it, and none of them can delete or redeclare a
//! queue or exchange. What each may still do:
//!
//! | operation | needs | granted on |
//! |---|---|---|
//! | publish | `write` on the exchange | the exchanges it publishes to; `amq.default` if it moves failed messages to delay and dead-letter queues |
//! | consume | `read` on the queue | its work queues (and their dead-letter queues), its own broadcast queues |
//! | bind its broadcast queue | `write` on the queue, `read` on the exchange | its own broadcast queues; the exchanges it listens to |
//! | declare its broadcast queue | `configure` on the queue | `<prefix>.<broadcast>.<32 hex digits>` only |

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::config::DeadLetterStrategy;
use crate::topology::{
    work_queue_arguments, Broadcast, Exchange, ExchangeKind, Names, Topology, WorkQueue,
};

/// What one service does on the broker.
#[derive(Debug, Clone, Default)]
pub struct BrokerUse {
    /// What it publishes to: exchanges, and the queues there it declares so that messages
    /// wait for their consumer (what its connection declares in `declare` mode).
    pub topology: Topology,
    /// Work queues it consumes (competing with its replicas), keeping their dead letters.
    pub consumes: Vec<WorkQueue>,
    /// Broadcasts it listens to, each instance on an exclusive queue of its own.
    pub listens: Vec<Broadcast>,
}

impl BrokerUse {
    /// `other`'s use added to this one.
    pub fn merge(mut self, other: BrokerUse) -> BrokerUse {
        for exchange in other.topology.exchanges {
            self.topology = self.topology.exchange(exchange);
        }
        for queue in other.topology.queues {
            self.topology = self.topology.queue(queue);
        }
        for queue in other.consumes {
            if !self.consumes.contains(&queue) {
                self.consumes.push(queue);
            }
        }
        for broadcast in other.listens {
            if !self.listens.contains(&broadcast) {
                self.listens.push(broadcast);
            }
        }
        self
    }

    /// Whether it moves failed deliveries on itself (to delay and dead-letter queues, through
    /// the default exchange).
    fn forwards(&self) -> bool {
        !self.consumes.is_empty() || self.listens.iter().any(|b| b.dead_letters)
    }

    /// The permissions its broker account needs when the topology was created for it.
    pub fn permissions(&self, names: &Names) -> Permissions {
        let instance_queues: Vec<String> = self
            .listens
            .iter()
            .map(|b| format!("{}\\.[0-9a-f]{{32}}", escape(&names.broadcast_queue(b))))
            .collect();
        let mut write: Vec<String> = self
            .topology
            .exchanges
            .iter()
            .map(|e| escape(&names.exchange(e)))
            .collect();
        write.extend(instance_queues.iter().cloned());
        if self.forwards() {
            write.push("amq\\.default".into());
        }
        let mut read: Vec<String> = self
            .listens
            .iter()
            .map(|b| escape(&names.exchange(&b.exchange)))
            .collect();
        read.extend(instance_queues.iter().cloned());
        for queue in &self.consumes {
            read.push(escape(&names.queue(queue)));
            read.push(escape(&names.dead_letter_queue(queue)));
        }
        Permissions {
            configure: pattern(instance_queues),
            write: pattern(write),
            read: pattern(read),
        }
    }
}

/// RabbitMQ permission patterns (regular expressions matched against resource names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// `^(a|b|c)$`, or `^$` (nothing) for an empty list.
fn pattern(mut alternatives: Vec<String>) -> String {
    alternatives.sort();
    alternatives.dedup();
    if alternatives.is_empty() {
        "^$".to_string()
    } else {
        format!("^({})$", alternatives.join("|"))
    }
}

fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A broker account: a service's, or an administrator's (`use_ = None`: every permission).
#[derive(Clone)]
pub struct Account {
    pub name: String,
    pub password: String,
    pub use_: Option<BrokerUse>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ SHA-256(salt ‖ password)).
pub fn password_hash(password: &str) -> String {
    let salt: [u8; 4] = rand::random();
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut salted = salt.to_vec();
    salted.extend_from_slice(&hasher.finalize());
    STANDARD.encode(salted)
}

/// A RabbitMQ definitions file for `vhost`: the accounts with their permissions, and every
/// exchange, queue (with the arguments the services declare them with) and binding the
/// accounts use.
pub fn definitions(
    names: &Names,
    vhost: &str,
    accounts: &[Account],
    strategy: DeadLetterStrategy,
) -> Value {
    let mut exchanges: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut queues: BTreeMap<String, FieldTable> = BTreeMap::new();
    let mut bindings: Vec<(String, String, String)> = Vec::new();
    let add_exchange = |exchanges: &mut BTreeMap<String, &'static str>, e: &Exchange| {
        let kind = match e.kind {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
        };
        exchanges.insert(names.exchange(e), kind);
    };
    let mut users = Vec::new();
    let mut permissions = Vec::new();
    for account in accounts {
        let (tags, granted) = match &account.use_ {
            None => (
                vec!["administrator"],
                Permissions {
                    configure: ".*".into(),
                    write: ".*".into(),
                    read: ".*".into(),
                },
            ),
            Some(use_) => (Vec::new(), use_.permissions(names)),
        };
        users.push(json!({
            "name": account.name,
            "password_hash": password_hash(&account.password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": tags,
        }));
        permissions.push(json!({
            "user": account.name,
            "vhost": vhost,
            "configure": granted.configure,
            "write": granted.write,
            "read": granted.read,
        }));
        let Some(use_) = &account.use_ else { continue };
        for exchange in &use_.topology.exchanges {
            add_exchange(&mut exchanges, exchange);
        }
        for queue in use_.topology.queues.iter().chain(&use_.consumes) {
            add_exchange(&mut exchanges, &queue.exchange);
            for (name, args) in work_queue_arguments(names, queue, strategy) {
                queues.insert(name, args);
            }
            for key in &queue.routing_keys {
                bindings.push((
                    names.exchange(&queue.exchange),
                    names.queue(queue),
                    key.clone(),
                ));
            }
        }
        for broadcast in &use_.listens {
            add_exchange(&mut exchanges, &broadcast.exchange);
            if broadcast.dead_letters {
                let mut args = FieldTable::default();
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
                queues.insert(names.broadcast_dead_letter_queue(broadcast), args);
            }
        }
    }
    bindings.sort();
    bindings.dedup();
    json!({
        "rabbit_version": "3.13.0",
        "users": users,
        "vhosts": [{ "name": vhost }],
        "permissions": permissions,
        "exchanges": exchanges.iter().map(|(name, kind)| json!({
            "name": name, "vhost": vhost, "type": kind, "durable": true,
            "auto_delete": false, "internal": false, "arguments": {},
        })).collect::<Vec<_>>(),
        "queues": queues.iter().map(|(name, args)| json!({
            "name": name, "vhost": vhost, "durable": true, "auto_delete": false,
            "arguments": arguments_json(args),
        })).collect::<Vec<_>>(),
        "bindings": bindings.iter().map(|(source, queue, key)| json!({
            "source": source, "vhost": vhost, "destination": queue,
            "destination_type": "queue", "routing_key": key, "arguments": {},
        })).collect::<Vec<_>>(),
    })
}

fn arguments_json(args: &FieldTable) -> Value {
    let mut out = Map::new();
    for (key, value) in args.inner() {
        let value = match value {
            AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
            AMQPValue::LongLongInt(n) => Value::from(*n),
            AMQPValue::Boolean(b) => Value::from(*b),
            other => Value::from(crate::message::value_text(other)),
        };
        out.insert(key.to_string(), value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::platform;

    fn matches(pattern: &str, name: &str) -> bool {
        // The patterns are anchored alternations of escaped names and one `[0-9a-f]{32}` tail:
        // enough to check by hand without a regex engine.
        let inner = pattern
            .strip_prefix("^(")
            .and_then(|p| p.strip_suffix(")$"));
        let Some(inner) = inner else { return false };
        inner.split('|').any(|alt| {
            let alt = alt.replace('\\', "");
            match alt.strip_suffix("[0-9a-f]{32}") {
                Some(prefix) => name.strip_prefix(prefix).is_some_and(|rest| {
                    rest.len() == 32 && rest.chars().all(|c| c.is_ascii_hexdigit())
                }),
                None => alt == name,
            }
        })
    }

    #[test]
    fn a_listener_may_bind_and_read_but_never_publish_revocations() {
        let names = Names::new("opsconductor");
        let targets = BrokerUse {
            topology: Topology::new().queue(platform::audit_events()),
            listens: vec![platform::token_revocations()],
            ..BrokerUse::default()
        };
        let p = targets.permissions(&names);
        let own = "opsconductor.auth.revocations.0123456789abcdef0123456789abcdef";
        assert!(matches(&p.configure, own));
        assert!(
            !matches(&p.configure, "opsconductor.audit.events"),
            "no deleting the audit queue"
        );
        assert!(!matches(&p.configure, "opsconductor.auth.revocations.dlq"));
        assert!(matches(&p.write, "opsconductor.audit"));
        assert!(matches(&p.write, own));
        assert!(
            !matches(&p.write, "opsconductor.auth"),
            "no publishing revocations"
        );
        assert!(matches(&p.read, "opsconductor.auth"));
        assert!(
            !matches(&p.read, "opsconductor.audit.events"),
            "no reading the audit trail"
        );

        let auth = targets.clone().merge(BrokerUse {
            topology: Topology::new().exchange(platform::auth_exchange()),
            ..BrokerUse::default()
        });
        assert!(matches(
            &auth.permissions(&names).write,
            "opsconductor.auth"
        ));
    }

    #[test]
    fn definitions_declare_accounts_and_topology() {
        let names = Names::new("opsconductor");
        let use_ = BrokerUse {
            topology: Topology::new().queue(platform::audit_events()),
            listens: vec![platform::token_revocations()],
            ..BrokerUse::default()
        };
        let doc = definitions(
            &names,
            "/",
            &[Account {
                name: "user".into(),
                password: "pw".into(),
                use_: Some(use_),
            }],
            DeadLetterStrategy::AtLeastOnce,
        );
        let queues: Vec<&str> = doc["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].as_str().unwrap())
            .collect();
        assert!(queues.contains(&"opsconductor.audit.events"));
        assert!(queues.contains(&"opsconductor.audit.events.retry.1s"));
        assert!(queues.contains(&"opsconductor.auth.revocations.dlq"));
        let audit = doc["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "opsconductor.audit.events")
            .unwrap();
        assert_eq!(audit["arguments"]["x-queue-type"], "quorum");
        assert_eq!(audit["arguments"]["x-delivery-limit"], 20);
        assert_eq!(doc["users"][0]["name"], "user");
        let hash = doc["users"][0]["password_hash"].as_str().unwrap();
        assert_eq!(STANDARD.decode(hash).unwrap().len(), 36, "salt + SHA-256");
        assert!(!doc.to_string().contains("\"pw\""));
    }
}
