//! The core of fnbroker that every connector and the broker share:
//!
//! - [`contract`]: the [`Source`]/[`Sink`]/[`Connector`] traits and the in-flight message
//!   [`Incoming`] with its acknowledgement handle [`AckHandle`]: the invariant that a source never
//!   acknowledges to its broker before the handle says so, and that a dropped handle means
//!   "redeliver", is stated there.
//! - [`event`]: the CloudEvents 1.0 model, strict validation, the JSON format (single and batch)
//!   and the normalization of plain messages.
//! - [`kit`]: what every broker connector shares: the owned acknowledgement task with lease
//!   extension ([`kit::Acker`]) and the channel-backed source ([`kit::ChannelSource`]).
//! - [`binding`]: helpers for binary content mode shared by the protocol bindings.
//! - [`values`]: the value types a connector's settings are made of (durations, sizes,
//!   locations, a trigger's source, a destination).
//! - [`registry`]: how a connector crate plugs in: its own settings types, their validation and
//!   its construction, behind [`registry::ConnectorPlugin`].
//! - [`invoke`] and [`function`]: the contract of a function call ([`invoke::Invoker`]) and how
//!   a function kind plugs in, behind [`function::FunctionPlugin`].
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

/// An error of the plugin seams that is a message with, where there is one, the error that
/// caused it: the struct, `new`, `caused`, and conversions from text (so that `?` takes the
/// messages the helpers give).
macro_rules! message_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, thiserror::Error)]
        #[error("{message}")]
        pub struct $name {
            message: String,
            #[source]
            source: Option<Box<dyn std::error::Error + Send + Sync>>,
        }

        impl $name {
            /// An error with `message`.
            pub fn new(message: impl Into<String>) -> Self {
                Self {
                    message: message.into(),
                    source: None,
                }
            }

            /// An error with `message`, caused by `source`.
            pub fn caused(
                message: impl Into<String>,
                source: impl std::error::Error + Send + Sync + 'static,
            ) -> Self {
                Self {
                    message: message.into(),
                    source: Some(Box::new(source)),
                }
            }
        }

        impl From<String> for $name {
            fn from(message: String) -> Self {
                Self::new(message)
            }
        }

        impl From<&str> for $name {
            fn from(message: &str) -> Self {
                Self::new(message)
            }
        }
    };
}
pub(crate) use message_error;

pub mod backlog;
pub mod binding;
pub mod contract;
pub mod event;
pub mod function;
pub mod invoke;
pub mod kit;
pub mod redact;
pub mod registry;
pub mod tls;
pub mod values;

pub use contract::{
    AckHandle, AtStop, Connector, ConnectorCapabilities, ConnectorError, ErrorKind, Incoming,
    KeyStore, ListenerCounts, Origin, Reader, Redelivery, Settlement, Sink, Source,
    SourceCapabilities, SourceKeys, Subscribing, Subscription,
};
pub use event::{Data, Event, InvalidEvent};

/// Re-exported so that connectors name the same CloudEvents SDK types.
pub use cloudevents;
