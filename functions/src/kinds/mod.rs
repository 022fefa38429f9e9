//! The function kinds, one module each: its settings (`functions.<name>.<kind>`), their
//! validation, the view the admin API shows, and how its invoker is built. [`KINDS`] registers
//! them; a new platform is one module here and one line there.

pub mod exec;
pub mod fission;
pub mod fn_project;
pub mod http;
pub mod knative;
pub mod lambda;
pub mod openfaas;
pub mod openwhisk;
pub mod process;

use fnbroker_core::function::{FunctionKind, Kind};
use fnbroker_core::registry::Report;

/// Every function kind, in the order messages list them.
pub static KINDS: &[&dyn FunctionKind] = &[
    &Kind::<http::Http>::NEW,
    &Kind::<exec::Exec>::NEW,
    &Kind::<process::Process>::NEW,
    &Kind::<openfaas::OpenFaas>::NEW,
    &Kind::<openwhisk::OpenWhisk>::NEW,
    &Kind::<fission::Fission>::NEW,
    &Kind::<knative::Knative>::NEW,
    &Kind::<fn_project::FnProject>::NEW,
    &Kind::<lambda::Lambda>::NEW,
];

/// The schemes of a function's URL.
const WEB: &[&str] = &["http", "https"];

/// Reports an empty (or blank) `value` of `key`.
fn not_empty(report: &Report<'_>, key: &str, value: &str) {
    if value.trim().is_empty() {
        report.error(&[key], format_args!("`{key}` must not be empty"));
    }
}

/// A URL for the admin API: without its password and query values.
fn shown(url: &str) -> String {
    fnbroker_core::redact::url(url).into_owned()
}

#[cfg(test)]
mod tests {
    use fnbroker_core::registry::Registry;

    #[test]
    fn a_function_has_exactly_one_kind_and_each_kind_is_checked() {
        static REGISTRY: Registry = Registry::new(&[]).with_functions(super::KINDS);
        let load = |functions: &str| {
            fnbroker_config::load_str(
                "f.yaml",
                &format!("functions:\n{functions}"),
                |_| None,
                &REGISTRY,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        assert!(load("  a: { knative: { url: \"http://kn\" } }\n").is_ok());
        let both = load(
            "  a: { knative: { url: \"http://kn\" }, fn: { endpoint: \"http://fn\", id: x } }\n",
        )
        .expect_err("two kinds");
        assert!(
            both.contains("f.yaml:2:") && both.contains("`knative` and `fn`"),
            "{both}"
        );
        let none = load("  a: { timeout: 1s }\n").expect_err("no kind");
        assert!(
            none.contains("`openwhisk`") && none.contains("`lambda`"),
            "{none}"
        );
        let whisk = load("  a: { openwhisk: { api: \"http://w\", action: x, auth: nocolon } }\n")
            .expect_err("auth");
        assert!(whisk.contains("uuid:key"), "{whisk}");
        let faas = load("  a: { openfaas: { gateway: \"ftp://gw\", name: x, username: admin } }\n")
            .expect_err("scheme and half a login");
        assert!(
            faas.contains("ftp") && faas.contains("both `username` and `password`"),
            "{faas}"
        );
        let lonely = load("  a: { openfaas: { gateway: \"http://gw\", name: x, async: true } }\n")
            .expect_err("no place for the callback");
        assert!(lonely.contains("`callback_url`"), "{lonely}");
        assert!(load("  a: { openfaas: { gateway: \"http://gw\", name: x, async: true, callback_url: \"http://fnb:9464\" } }\n").is_ok());
    }
}
