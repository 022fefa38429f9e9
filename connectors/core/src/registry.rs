//! The connector registry: how a connector crate plugs into fnbroker.
//!
//! A connector crate owns its configuration: the connection settings under its kind
//! (`connectors.<name>.<kind>`), the settings a trigger's `from` may add besides `connector` and
//! `topic`, and the settings a reply or dead-letter destination may add besides `connector` and
//! `topic`. It implements [`ConnectorPlugin`] once: the typed settings (serde + JSON Schema),
//! their validation, and how to build the connector. The broker lists every plugin in one
//! [`Registry`], one line per connector; loading, `validate`, `fnbroker schema` and the runtime
//! all go through it, and the core knows no kind by name.
//!
//! Settings are parsed once, at load, into the plugin's types: a [`Settings`] value carries them
//! to the connector, which takes them back with [`Settings::get`].

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;

use crate::binding::{Sample, concrete_topic};
use crate::contract::{Connector, ConnectorCapabilities, ConnectorError, Origin, SourceKeys};
use crate::event::Event;
use crate::function::FunctionKind;
use crate::values::{self, ConfDuration};

/// What a connector crate implements to be registered: its kind, its typed settings, their
/// validation, and how to build the connector from them.
pub trait ConnectorPlugin: Send + Sync + 'static {
    /// The kind, as the configuration writes it (`connectors.<name>.<KIND>`).
    const KIND: &'static str;
    /// One line about the kind, for the schema (`Kafka (and Kafka-API brokers)`).
    const ABOUT: &'static str;
    /// What the kind can do (when its subscriptions may open, whether it publishes), read by
    /// validation and by the runtime. Default: [`ConnectorCapabilities::AT_START`].
    const CAPABILITIES: ConnectorCapabilities = ConnectorCapabilities::AT_START;

    /// The connection settings, `connectors.<name>.<KIND>`.
    type Settings: DeserializeOwned + JsonSchema + fmt::Debug + Send + Sync + 'static;
    /// The keys a trigger's `from` may add besides `connector` and `topic`.
    type Source: DeserializeOwned + JsonSchema + fmt::Debug + Clone + Send + Sync + 'static;
    /// The keys a reply or dead-letter destination may add besides `connector` and `topic`.
    type Destination: DeserializeOwned + JsonSchema + fmt::Debug + Clone + Send + Sync + 'static;

    /// Checks what the types cannot say (a URL's scheme, a duration's text, a range), reporting
    /// each problem at its key.
    fn validate(_settings: &Self::Settings, _report: &Report<'_>) {}

    /// Checks one trigger's source: its `topic` and the keys of [`Self::Source`].
    fn validate_source(_source: &Self::Source, _from: &SourceUse<'_>, _report: &Report<'_>) {}

    /// Checks the sources of every trigger on one connector together (an HTTP path's triggers
    /// must agree on `sync`).
    fn validate_together(_sources: &[(SourceUse<'_>, &Self::Source, Report<'_>)]) {}

    /// Checks one reply or dead-letter destination.
    fn validate_destination(
        _destination: &Self::Destination,
        _topic: Option<&str>,
        _report: &Report<'_>,
    ) {
    }

    /// Builds the connector named `name`. Nothing connects yet: that is
    /// [`Connector::subscribe`] and [`Connector::start`].
    fn build(name: &str, settings: &Self::Settings) -> Result<Arc<dyn Connector>, ConnectorError>;

    /// Decodes a message given by hand as the connector named `name` would receive it, with no
    /// connection (`fnbroker explain` and `fnbroker test`): its event (several for an HTTP
    /// batch) and where each came from. An error says why the message cannot arrive so.
    fn decode_sample(
        name: &str,
        settings: &Self::Settings,
        sample: &Sample<'_>,
    ) -> Result<Vec<(Event, Origin)>, SampleError>;

    /// The wildcard characters a source's topic may hold (`+` and `#` for MQTT, `*` and `>`
    /// for NATS). Default: none.
    const WILDCARDS: &'static [char] = &[];

    /// Whether a source topic (with the kind's [`WILDCARDS`](Self::WILDCARDS)) takes `topic`.
    /// Default: they are equal.
    fn topic_matches(filter: &str, topic: &str) -> bool {
        filter == topic
    }

    /// Where to publish an event so that it arrives again through a trigger's source
    /// (`fnbroker redrive`): the topic, and the destination keys. `subject` is the event's,
    /// which names the concrete topic where the source has wildcards. Default: the source's
    /// `topic`, or the concrete one the event came on (see [`concrete_topic`]).
    fn republish_to(
        _source: &Self::Source,
        from_topic: Option<&str>,
        subject: Option<&str>,
    ) -> Result<(String, SourceKeys), RouteError> {
        concrete_topic(from_topic, subject, Self::WILDCARDS, Self::topic_matches)
    }

    /// The source that consumes a trigger's `retry_topic` (`topic`, for the trigger named
    /// `trigger`): its topic and keys, a durable consumer of its own shared by the replicas.
    /// Default: an error, the kind keeps no messages to hold retry state in.
    fn retry_source(
        _trigger: &str,
        _topic: &str,
    ) -> Result<(Option<String>, SourceKeys), RouteError> {
        Err(RouteError::new(format!(
            "a {} connector cannot hold retry state (Kafka, NATS with JetStream, AMQP and MQTT can)",
            Self::KIND
        )))
    }

    /// Whether a message that arrives on `topic` comes through a trigger's source (`from_topic`
    /// and the kind's keys): its wildcards, or its queue. Default: [`topic_matches`](Self::topic_matches).
    fn source_takes(_source: &Self::Source, from_topic: Option<&str>, topic: &str) -> bool {
        from_topic.is_some_and(|filter| Self::topic_matches(filter, topic))
    }

    /// What a trigger's source (`source`, on `from_topic`) does to the event of a plain message
    /// given by hand, after [`decode_sample`](Self::decode_sample), as it would to one
    /// received: the attributes it set, each with where its value came from (`fnbroker
    /// explain` shows them). Default: nothing.
    fn shape_sample(
        _source: &Self::Source,
        _from_topic: Option<&str>,
        _sample: &Sample<'_>,
        _event: &mut Event,
    ) -> Result<Vec<(String, String)>, SampleError> {
        Ok(Vec::new())
    }
}

/// A trigger's use of a source, as validation sees it.
#[derive(Debug, Clone, Copy)]
pub struct SourceUse<'a> {
    /// The trigger's name.
    pub trigger: &'a str,
    /// The connector's name.
    pub connector: &'a str,
    /// The trigger's `topic`, when it has one.
    pub topic: Option<&'a str>,
}

impl SourceUse<'_> {
    /// Reports a missing or empty `topic` (a source that needs one), returning it when it is
    /// there.
    pub fn require_topic(&self, report: &Report<'_>) -> Option<&str> {
        match self.topic {
            None => {
                report.error(&["connector"], "`from` needs a `topic`");
                None
            }
            Some("") => {
                report.error(&["topic"], "`topic` must not be empty");
                None
            }
            Some(t) => Some(t),
        }
    }
}

/// Settings parsed into a plugin's type, carried to its connector.
#[derive(Clone)]
pub struct Settings(Arc<dyn SettingsValue>);

trait SettingsValue: Any + fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + fmt::Debug + Send + Sync> SettingsValue for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Settings {
    /// Wraps typed settings.
    pub fn new<T: Any + fmt::Debug + Send + Sync>(value: T) -> Self {
        Self(Arc::new(value))
    }

    /// The settings as the plugin's type; `None` for another type.
    pub fn get<T: Any>(&self) -> Option<&T> {
        // Through the `dyn`, not the `Arc` (which is itself `Any`).
        let value: &dyn SettingsValue = &*self.0;
        value.as_any().downcast_ref()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_give_back_their_type_only() {
        let s = Settings::new(String::from("x"));
        assert_eq!(s.get::<String>().map(String::as_str), Some("x"));
        assert!(s.get::<u32>().is_none());
        assert!(s.clone().get::<String>().is_some());
    }
}

/// A problem found while validating, at a key path of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The key path from the document's root.
    pub path: Vec<String>,
    /// The whole message.
    pub message: String,
}

/// Where a plugin reports what is wrong: each problem at a key below the place being
/// validated, with the owner (`connector `k``, `trigger `t``) named in the message.
#[derive(Clone)]
pub struct Report<'a> {
    findings: &'a RefCell<Vec<Finding>>,
    base: Vec<String>,
    owner: String,
}

impl<'a> Report<'a> {
    /// A report into `findings`, at the key path `base`, for `owner`. Made by the configuration
    /// loader; a plugin only receives one.
    pub fn new(findings: &'a RefCell<Vec<Finding>>, base: Vec<String>, owner: String) -> Self {
        Self {
            findings,
            base,
            owner,
        }
    }

    /// Reports `message` at `key` (a path below this place; empty: the place itself).
    pub fn error(&self, key: &[&str], message: impl fmt::Display) {
        let mut path = self.base.clone();
        path.extend(key.iter().map(|k| k.to_string()));
        self.findings.borrow_mut().push(Finding {
            path,
            message: format!("{}: {message}", self.owner),
        });
    }

    /// Reports a duration whose text did not parse.
    pub fn duration(&self, key: &str, value: &ConfDuration) {
        self.duration_at(&[key], value);
    }

    /// Reports a value that is not a duration, at a nested key (`["auth", "stripe", "tolerance"]`).
    pub fn duration_at(&self, path: &[&str], value: &ConfDuration) {
        if let Some(problem) = values::duration_problem(value) {
            let key = path.last().copied().unwrap_or_default();
            self.error(path, format_args!("`{key}`: {problem}"));
        }
    }

    /// Reports a value that is not an address `host:port`.
    pub fn address(&self, key: &str, value: &str) {
        if let Some(problem) = values::address_problem(value) {
            self.error(&[key], format_args!("`{key}`: {problem}"));
        }
    }

    /// Reports a value that is not a URL with a host and one of `schemes`.
    pub fn url(&self, key: &str, value: &str, schemes: &[&str]) {
        if let Some(problem) = values::url_problem(value, schemes) {
            self.error(&[key], format_args!("`{key}`: {problem}"));
        }
    }

    /// Reads and checks the files of a client `tls` block; a problem is reported at its key.
    pub fn tls(&self, tls: Option<&crate::tls::Tls>) {
        if let Some(Err(e)) = tls.map(crate::tls::Tls::check) {
            self.error(&["tls", e.key], format_args!("{}", e.message));
        }
    }

    /// Reads and checks the files of a listener's `tls` block; a problem is reported at its key.
    pub fn server_tls(&self, tls: Option<&crate::tls::ServerTls>) {
        if let Some(Err(e)) = tls.map(crate::tls::ServerTls::check) {
            self.error(&["tls", e.key], format_args!("{}", e.message));
        }
    }
}

/// A plugin with its types erased, as the [`Registry`] holds it.
pub trait ConnectorKind: Send + Sync {
    /// The kind, as the configuration writes it.
    fn kind(&self) -> &'static str;
    /// What the kind can do ([`ConnectorPlugin::CAPABILITIES`]).
    fn capabilities(&self) -> ConnectorCapabilities;
    /// One line about the kind.
    fn about(&self) -> &'static str;
    /// Parses connection settings (unknown keys go to `ignored`, as paths below the value).
    fn parse_settings(
        &self,
        value: serde_json::Value,
        ignored: &mut dyn FnMut(Vec<String>),
    ) -> Result<Settings, ParseError>;
    /// Parses a trigger's source keys.
    fn parse_source(
        &self,
        value: serde_json::Value,
        ignored: &mut dyn FnMut(Vec<String>),
    ) -> Result<Settings, ParseError>;
    /// Parses a destination's keys.
    fn parse_destination(
        &self,
        value: serde_json::Value,
        ignored: &mut dyn FnMut(Vec<String>),
    ) -> Result<Settings, ParseError>;
    /// [`ConnectorPlugin::validate`].
    fn validate(&self, settings: &Settings, report: &Report<'_>);
    /// [`ConnectorPlugin::validate_source`].
    fn validate_source(&self, source: &Settings, from: &SourceUse<'_>, report: &Report<'_>);
    /// [`ConnectorPlugin::validate_together`].
    fn validate_together(&self, sources: &[(SourceUse<'_>, &Settings, Report<'_>)]);
    /// [`ConnectorPlugin::validate_destination`].
    fn validate_destination(
        &self,
        destination: &Settings,
        topic: Option<&str>,
        report: &Report<'_>,
    );
    /// Builds the connector.
    fn build(&self, name: &str, settings: &Settings) -> Result<Arc<dyn Connector>, ConnectorError>;
    /// [`ConnectorPlugin::decode_sample`].
    fn decode_sample(
        &self,
        name: &str,
        settings: &Settings,
        sample: &Sample<'_>,
    ) -> Result<Vec<(Event, Origin)>, SampleError>;
    /// [`ConnectorPlugin::source_takes`].
    fn source_takes(&self, source: &Settings, from_topic: Option<&str>, topic: &str) -> bool;
    /// [`ConnectorPlugin::shape_sample`].
    fn shape_sample(
        &self,
        source: &Settings,
        from_topic: Option<&str>,
        sample: &Sample<'_>,
        event: &mut Event,
    ) -> Result<Vec<(String, String)>, SampleError>;
    /// [`ConnectorPlugin::retry_source`].
    fn retry_source(
        &self,
        trigger: &str,
        topic: &str,
    ) -> Result<(Option<String>, SourceKeys), RouteError>;
    /// [`ConnectorPlugin::republish_to`].
    fn republish_to(
        &self,
        source: &Settings,
        from_topic: Option<&str>,
        subject: Option<&str>,
    ) -> Result<(String, SourceKeys), RouteError>;
    /// The schemas of the settings, the source keys and the destination keys.
    fn schemas(&self, generator: &mut SchemaGenerator) -> [Schema; 3];
}

/// Why a message given by hand cannot arrive as the connector would receive it (`fnbroker
/// explain`, `fnbroker test`).
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// The message is no valid CloudEvent in the mode it claims.
    #[error(transparent)]
    Event(#[from] crate::event::InvalidEvent),
    /// The connector would not take it so (no trigger on the path, a method it refuses).
    #[error("{0}")]
    Refused(String),
}

impl From<String> for SampleError {
    fn from(message: String) -> Self {
        Self::Refused(message)
    }
}

impl From<&str> for SampleError {
    fn from(message: &str) -> Self {
        Self::Refused(message.to_string())
    }
}

crate::message_error! {
    /// Why a connector kind cannot route as asked, with no connection: no topic to republish an
    /// event to (`fnbroker redrive`), no retry state to keep, no subscription for discovery.
    RouteError
}

/// A value that does not fit a plugin's type: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The key path below the parsed value.
    pub path: Vec<String>,
    /// The parser's message.
    pub message: String,
}

/// The erased form of a [`ConnectorPlugin`]: `&Kind::<P>::NEW` is what a [`Registry`] lists.
pub struct Kind<P>(PhantomData<fn() -> P>);

impl<P> Kind<P> {
    /// The erased plugin.
    pub const NEW: Self = Kind(PhantomData);
}

/// The key path of an ignored key, as segments (a sequence index as its number).
pub fn path_segments(path: &serde_ignored::Path<'_>, out: &mut Vec<String>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            path_segments(parent, out);
            out.push(index.to_string());
        }
        P::Map { parent, key } => {
            path_segments(parent, out);
            out.push(key.clone());
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_segments(parent, out)
        }
    }
}

pub(crate) fn parse<T: DeserializeOwned + fmt::Debug + Send + Sync + 'static>(
    value: serde_json::Value,
    ignored: &mut dyn FnMut(Vec<String>),
) -> Result<Settings, ParseError> {
    let mut collect = |path: serde_ignored::Path<'_>| {
        let mut segments = Vec::new();
        path_segments(&path, &mut segments);
        ignored(segments);
    };
    let de = serde_ignored::Deserializer::new(value, &mut collect);
    serde_path_to_error::deserialize::<_, T>(de)
        .map(Settings::new)
        .map_err(|e| ParseError {
            path: e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                    _ => None,
                })
                .collect(),
            message: e.into_inner().to_string(),
        })
}

impl<P: ConnectorPlugin> ConnectorKind for Kind<P> {
    fn kind(&self) -> &'static str {
        P::KIND
    }
    fn capabilities(&self) -> ConnectorCapabilities {
        P::CAPABILITIES
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
    fn parse_source(
        &self,
        value: serde_json::Value,
        ignored: &mut dyn FnMut(Vec<String>),
    ) -> Result<Settings, ParseError> {
        parse::<P::Source>(value, ignored)
    }
    fn parse_destination(
        &self,
        value: serde_json::Value,
        ignored: &mut dyn FnMut(Vec<String>),
    ) -> Result<Settings, ParseError> {
        parse::<P::Destination>(value, ignored)
    }
    fn validate(&self, settings: &Settings, report: &Report<'_>) {
        if let Some(s) = settings.get::<P::Settings>() {
            P::validate(s, report);
        }
    }
    fn validate_source(&self, source: &Settings, from: &SourceUse<'_>, report: &Report<'_>) {
        if let Some(s) = source.get::<P::Source>() {
            P::validate_source(s, from, report);
        }
    }
    fn validate_together(&self, sources: &[(SourceUse<'_>, &Settings, Report<'_>)]) {
        let typed: Vec<_> = sources
            .iter()
            .filter_map(|(u, s, r)| Some((*u, s.get::<P::Source>()?, r.clone())))
            .collect();
        P::validate_together(&typed);
    }
    fn validate_destination(
        &self,
        destination: &Settings,
        topic: Option<&str>,
        report: &Report<'_>,
    ) {
        if let Some(d) = destination.get::<P::Destination>() {
            P::validate_destination(d, topic, report);
        }
    }
    fn build(&self, name: &str, settings: &Settings) -> Result<Arc<dyn Connector>, ConnectorError> {
        let settings = settings
            .get::<P::Settings>()
            .ok_or_else(|| ConnectorError::Permanent {
                connector: name.to_string(),
                message: format!("the settings are not those of a {} connector", P::KIND),
                source: None,
            })?;
        P::build(name, settings)
    }
    fn decode_sample(
        &self,
        name: &str,
        settings: &Settings,
        sample: &Sample<'_>,
    ) -> Result<Vec<(Event, Origin)>, SampleError> {
        let settings = settings.get::<P::Settings>().ok_or_else(|| {
            SampleError::Refused(format!(
                "the settings are not those of a {} connector",
                P::KIND
            ))
        })?;
        P::decode_sample(name, settings, sample)
    }
    fn source_takes(&self, source: &Settings, from_topic: Option<&str>, topic: &str) -> bool {
        source
            .get::<P::Source>()
            .is_some_and(|s| P::source_takes(s, from_topic, topic))
    }
    fn shape_sample(
        &self,
        source: &Settings,
        from_topic: Option<&str>,
        sample: &Sample<'_>,
        event: &mut Event,
    ) -> Result<Vec<(String, String)>, SampleError> {
        match source.get::<P::Source>() {
            Some(s) => P::shape_sample(s, from_topic, sample, event),
            None => Ok(Vec::new()),
        }
    }
    fn retry_source(
        &self,
        trigger: &str,
        topic: &str,
    ) -> Result<(Option<String>, SourceKeys), RouteError> {
        P::retry_source(trigger, topic)
    }
    fn republish_to(
        &self,
        source: &Settings,
        from_topic: Option<&str>,
        subject: Option<&str>,
    ) -> Result<(String, SourceKeys), RouteError> {
        let source = source.get::<P::Source>().ok_or_else(|| {
            RouteError::new(format!("the source is not that of a {} connector", P::KIND))
        })?;
        P::republish_to(source, from_topic, subject)
    }
    fn schemas(&self, generator: &mut SchemaGenerator) -> [Schema; 3] {
        [
            generator.subschema_for::<P::Settings>(),
            generator.subschema_for::<P::Source>(),
            generator.subschema_for::<P::Destination>(),
        ]
    }
}

/// Every connector kind fnbroker knows.
#[derive(Clone, Copy)]
pub struct Registry {
    kinds: &'static [&'static dyn ConnectorKind],
    /// Kinds this build leaves out, each with the cargo feature that builds it in.
    absent: &'static [(&'static str, &'static str)],
    functions: &'static [&'static dyn FunctionKind],
}

impl Registry {
    /// A registry of `kinds`, one line per connector crate:
    /// `&Kind::<fnbroker_kafka::Plugin>::NEW`.
    pub const fn new(kinds: &'static [&'static dyn ConnectorKind]) -> Self {
        Self {
            kinds,
            absent: &[],
            functions: &[],
        }
    }

    /// The same registry, with the function kinds `functions`, one line per kind:
    /// `&function::Kind::<fnbroker_functions::Http>::NEW`.
    pub const fn with_functions(self, functions: &'static [&'static dyn FunctionKind]) -> Self {
        Self {
            kinds: self.kinds,
            absent: self.absent,
            functions,
        }
    }

    /// The function kind named `kind`.
    pub fn function(&self, kind: &str) -> Option<&'static dyn FunctionKind> {
        self.functions.iter().copied().find(|k| k.kind() == kind)
    }

    /// Every function kind, in registration order.
    pub fn functions(&self) -> impl Iterator<Item = &'static dyn FunctionKind> + '_ {
        self.functions.iter().copied()
    }

    /// The same registry, knowing which kinds this build leaves out (`(kind, cargo feature)`),
    /// so that a configuration naming one is told which feature builds it in.
    pub const fn leaving_out(self, absent: &'static [(&'static str, &'static str)]) -> Self {
        Self {
            kinds: self.kinds,
            absent,
            functions: self.functions,
        }
    }

    /// The cargo feature that builds `kind` in, when this build leaves it out.
    pub fn feature_of_absent(&self, kind: &str) -> Option<&'static str> {
        self.absent
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, feature)| *feature)
    }

    /// The kind named `kind`.
    pub fn get(&self, kind: &str) -> Option<&'static dyn ConnectorKind> {
        self.kinds.iter().copied().find(|k| k.kind() == kind)
    }

    /// Every kind, in registration order.
    pub fn kinds(&self) -> impl Iterator<Item = &'static dyn ConnectorKind> + '_ {
        self.kinds.iter().copied()
    }

    /// The kinds' names, comma-separated, for messages.
    pub fn names(&self) -> String {
        self.kinds
            .iter()
            .map(|k| k.kind())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Settings for a kind that takes no keys (a destination of a connector without options).
#[derive(Debug, Clone, Default, serde::Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct NoSettings {}
