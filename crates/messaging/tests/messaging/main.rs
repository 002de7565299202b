//! Messaging against the real RabbitMQ at 127.0.0.1:5672 and real SQLite/PostgreSQL databases.
//! Each test takes its own name prefix (a `TestBroker`), so tests run in parallel; the broker
//! restart tests live in their own binary (`broker_restart`), since they disturb every
//! connection.

mod consuming;
mod deadletters;
mod outbox;
mod publishing;
mod support;
