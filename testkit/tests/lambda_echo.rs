//! `lambda-echo`, the Rust Lambda function the `process` kind's end-to-end tests run, is built
//! with the workspace's tests (an integration test of this crate makes Cargo build it beside
//! the test executables, where those tests find it).

use std::process::Command;

/// Outside a Lambda runtime environment it refuses to start, as `lambda_runtime` does.
#[test]
fn lambda_echo_needs_a_runtime_api() {
    let out = Command::new(env!("CARGO_BIN_EXE_lambda-echo"))
        .env_clear()
        .output()
        .expect("run lambda-echo");
    assert!(!out.status.success(), "{out:?}");
}
