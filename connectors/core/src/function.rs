//! Function kinds as plugins: how a way of calling a function (`http`, `exec`, a serverless
//! platform's) plugs into fnbroker, mirroring [`ConnectorPlugin`](crate::registry::ConnectorPlugin).
//!
//! A kind owns its configuration, the settings under its key (`functions.<name>.<kind>`): it
//! implements [`FunctionPlugin`] once (the typed settings with serde and JSON Schema, their
//! validation, the redacted view `/v1/config` shows, and how to build the [`Invoker`]). The
//! [`Registry`](crate::registry::Registry) lists every kind, one line each
//! (`&function::Kind::<Http>::NEW`); loading, `validate`, `fnbroker schema`, the admin API and
//! the runtime go through it, and no configuration type names a kind.

use std::fmt;
use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;

use crate::invoke::Invoker;
use crate::registry::{ParseError, Report, Settings, parse};
use crate::tls::Tls;

/// What a function kind implements to be registered.
pub trait FunctionPlugin: Send + Sync + 'static {
    /// The kind, as the configuration writes it (`functions.<name>.<KIND>`).
    const KIND: &'static str;
    /// One line about the kind, for the schema and `--help`.
    const ABOUT: &'static str;

    /// The kind's settings, `functions.<name>.<KIND>`.
    type Settings: DeserializeOwned + JsonSchema + fmt::Debug + Send + Sync + 'static;

    /// Checks what the types cannot say (a URL's scheme, an empty name), reporting each problem
    /// at its key.
    fn validate(_settings: &Self::Settings, _using: &FunctionUse<'_>, _report: &Report<'_>) {}

    /// Whether the kind takes a batch of events in one call (`delivery.batch`). Default: yes.
    fn takes_batches(_settings: &Self::Settings) -> bool {
        true
    }

    /// The settings' client `tls` block, if they have one (validation reads its files; the
    /// runtime reloads a function whose certificates changed).
    fn tls(_settings: &Self::Settings) -> Option<&Tls> {
        None
    }

    /// The settings as the admin API shows them: nothing that may be a secret (URLs without
    /// their password and query values, headers and environment variables by name only).
    fn view(settings: &Self::Settings) -> serde_json::Value;

    /// Builds the invoker; nothing is called yet.
    fn build(
        settings: &Self::Settings,
        context: &InvokeContext,
    ) -> Result<Box<dyn Invoker>, BuildError>;
}

/// What validating a function's settings may need of the rest of the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct FunctionUse<'a> {
    /// The admin listener's base URL (`http://10.0.0.5:9464`), when it listens on a specific
    /// address: where a platform that answers later can post its result.
    pub admin_url: Option<&'a str>,
}

/// What building an invoker may need from the running broker.
#[derive(Debug, Default)]
pub struct InvokeContext {
    /// The function's name (`functions.<name>`): what a kind that runs it tells the function
    /// and tags its logs and metrics with.
    pub function: String,
    /// The function's `concurrency`: the most calls in flight, so the connections to pool.
    pub concurrency: usize,
    /// The admin listener's base URL (`http://127.0.0.1:9464`), where platforms that answer
    /// later (an OpenFaaS asynchronous call) post their result, when it listens on a specific
    /// address.
    pub admin_url: Option<String>,
    /// What a kind shares with the broker by type (the registry of calls waiting for a
    /// callback), as the broker put it there.
    pub extensions: http::Extensions,
}

crate::message_error! {
    /// Why an invoker could not be built (a URL that does not parse, credentials that are not
    /// there).
    BuildError
}

/// A function kind with its types erased, as the registry holds it.
pub trait FunctionKind: Send + Sync {
    /// The kind, as the configuration writes it.
    fn kind(&self) -> &'static str;
    /// One line about the kind.
    fn about(&self) -> &'static str;
    /// Parses the kind's settings (unknown keys go to `ignored`, as paths below the value).
    fn parse_settings(
        &self,
        value: serde_json::Value,
        ignored: &mut dyn FnMut(Vec<String>),
    ) -> Result<Settings, ParseError>;
    /// [`FunctionPlugin::validate`].
    fn validate(&self, settings: &Settings, using: &FunctionUse<'_>, report: &Report<'_>);
    /// [`FunctionPlugin::takes_batches`].
    fn takes_batches(&self, settings: &Settings) -> bool;
    /// [`FunctionPlugin::tls`].
    fn tls<'a>(&self, settings: &'a Settings) -> Option<&'a Tls>;
    /// [`FunctionPlugin::view`].
    fn view(&self, settings: &Settings) -> serde_json::Value;
    /// [`FunctionPlugin::build`].
    fn build(
        &self,
        settings: &Settings,
        context: &InvokeContext,
    ) -> Result<Box<dyn Invoker>, BuildError>;
    /// The schema of the settings.
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema;
}

/// The erased form of a [`FunctionPlugin`]: `&Kind::<P>::NEW` is what a registry lists.
pub struct Kind<P>(PhantomData<fn() -> P>);

impl<P> Kind<P> {
    /// The erased plugin.
    pub const NEW: Self = Kind(PhantomData);
}

impl<P: FunctionPlugin> FunctionKind for Kind<P> {
    fn kind(&self) -> &'static str {
        P::KIND
    }
    fn about(&self) -> &'static str {
        P::ABOUT
    }
    fn parse_settings(
        &self,
        value: serde_json::Value,
        ignored: &mut dyn FnMut(Vec<String>),
    ) -> Result<Settings, ParseError> {
        parse::<P::Settings>(value, ignored)
    }
    fn validate(&self, settings: &Settings, using: &FunctionUse<'_>, report: &Report<'_>) {
        if let Some(s) = settings.get::<P::Settings>() {
            P::validate(s, using, report);
        }
    }
    fn takes_batches(&self, settings: &Settings) -> bool {
        settings.get::<P::Settings>().is_some_and(P::takes_batches)
    }
    fn tls<'a>(&self, settings: &'a Settings) -> Option<&'a Tls> {
        settings.get::<P::Settings>().and_then(P::tls)
    }
    fn view(&self, settings: &Settings) -> serde_json::Value {
        settings
            .get::<P::Settings>()
            .map_or(serde_json::Value::Null, P::view)
    }
    fn build(
        &self,
        settings: &Settings,
        context: &InvokeContext,
    ) -> Result<Box<dyn Invoker>, BuildError> {
        let settings = settings.get::<P::Settings>().ok_or_else(|| {
            BuildError::new(format!(
                "the settings are not those of a `{}` function",
                P::KIND
            ))
        })?;
        P::build(settings, context)
    }
    fn schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<P::Settings>()
    }
}
