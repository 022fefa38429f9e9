//! A Lambda function built on the `lambda_runtime` crate, for the end-to-end tests of the
//! `process` function kind: it answers each event with the event, its request id and the
//! function's name, as a Rust handler deployed to AWS Lambda would run.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::{Value, json};

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, context) = event.into_parts();
    Ok(json!({
        "runtime": "lambda_runtime",
        "pid": std::process::id(),
        "request_id": context.request_id,
        "function": context.env_config.function_name,
        "event": payload,
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(handle)).await
}
