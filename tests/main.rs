//! The end-to-end tests, one test binary: the real `fnbroker` binary against the real servers
//! (`scripts/services.sh` starts them), a module per area, sharing the helpers of the
//! conformance crate (`common`). One binary links once; nextest still runs every test in its own
//! process, named `<module>::<test>`. The conformance suite itself runs in each connector crate
//! (`connectors/<kind>/tests/conformance.rs`).

#[macro_use]
extern crate fnbroker_conformance;

use fnbroker_conformance as common;

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
mod process;
mod redis;
mod webhooks;
