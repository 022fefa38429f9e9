//! The end-to-end tests, one test binary: the real `fnbroker` binary against the real servers
//! (`scripts/services.sh` starts them), a module per area, sharing the helpers of [`common`].
//! One binary builds the helpers once and links once; nextest still runs every test in its own
//! process, named `<module>::<test>` (the conformance suite: `suite::<connector>::<case>`).

mod common;

mod amqp;
mod cli;
mod deploy;
mod hostile;
mod http;
mod kafka;
mod mqtt;
mod nats;
mod observability;
mod platforms;
mod postgres;
mod redis;
mod suite;
