//! The connector conformance suite on a PostgreSQL cluster of its own: this crate's adapter, and one test per case
//! (`fnbroker_conformance::suite!`).

use std::ops::Range;

use fnbroker_conformance::postgres;
use fnbroker_conformance::{Adapter, Redelivers, Restartable, Topic, unique_id};
use serde_json::{Value, json};
use tokio::sync::Mutex;

fnbroker_conformance::suite!(Postgres, restart);

/// PostgreSQL: a cluster of the test's own (logical replication), the publication `fnbroker`
/// of all tables, a table `items_<id> (n)` per topic; a message is an inserted row.
struct Postgres {
    cluster: postgres::Cluster,
    client: Mutex<tokio_postgres::Client>,
}

impl Adapter for Postgres {
    const NAME: &'static str = "postgres";
    const KEEPS_RETIRED: bool = false;
    const REDELIVERS: Redelivers = Redelivers::Yes;

    async fn new() -> Self {
        let cluster = postgres::Cluster::start();
        let client = cluster.client().await;
        client
            .batch_execute("CREATE PUBLICATION fnbroker FOR ALL TABLES;")
            .await
            .expect("publication");
        Self {
            cluster,
            client: Mutex::new(client),
        }
    }

    fn connector(&self) -> Value {
        json!({ "postgres": { "url": self.cluster.url() } })
    }

    async fn prepare(&self) -> Topic {
        let table = format!("items_{}", unique_id());
        self.client
            .lock()
            .await
            .batch_execute(&format!("CREATE TABLE {table} (n int PRIMARY KEY)"))
            .await
            .expect("table");
        Topic {
            from: json!({ "connector": "c", "topic": format!("public.{table}") }),
            address: table,
        }
    }

    async fn publish(&self, topic: &Topic, numbers: Range<usize>) {
        // One transaction per row: a message is a commit.
        let client = self.client.lock().await;
        for n in numbers {
            client
                .batch_execute(&format!("INSERT INTO {} VALUES ({n})", topic.address))
                .await
                .expect("insert");
        }
    }

    fn number(body: &[u8]) -> Option<usize> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        usize::try_from(v["new"]["n"].as_i64()?).ok()
    }
}

impl Restartable for Postgres {
    /// Its cluster is its own already.
    async fn private() -> Self {
        Self::new().await
    }

    async fn restart(&self) {
        let mut client = self.client.lock().await;
        self.cluster.restart();
        *client = self.cluster.client().await;
    }
}
