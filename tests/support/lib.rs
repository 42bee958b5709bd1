//! Test harness: a fresh database per test in a real Postgres, and the real
//! server on an ephemeral port.
//!
//! The Postgres server comes from `DATABASE_URL` (`make test` starts a
//! throwaway cluster and sets it). Each test creates its own database there,
//! so tests run in parallel without seeing each other's rows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rlt_server::http::{ApiContext, HttpConfig};
use rlt_server::jobs::Registry;
use rlt_server::jobs::events::EventHub;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// Where `scripts/fetch-assets.sh` put the model and data.
pub fn data_dir() -> PathBuf {
    std::env::var_os("RLT_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("data"))
}

pub fn champ_file() -> PathBuf {
    let path = data_dir().join("datasets/champ/v0.json");
    assert!(path.exists(), "{} is missing; run `make assets` (or `make test`)", path.display());
    path
}

/// The `rlt` binary built by `make build` next to this test binary.
pub fn rlt_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps").join("rlt");
    assert!(bin.exists(), "{} is missing; build it with `make build` first", bin.display());
    bin
}

pub fn server_options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run `make test`, or point DATABASE_URL at a Postgres server where tests may create databases",
    );
    url.parse().expect("DATABASE_URL is a valid Postgres URL")
}

/// A new, migrated, empty database that only this test uses.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    pub options: PgConnectOptions,
}

impl TestDb {
    pub async fn new() -> Self {
        let server = server_options();
        let name = format!("rlt_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect_with(&server.clone().database("postgres"))
            .await
            .expect("connect to the test Postgres server");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create test database");
        admin.close().await.ok();
        let options = server.database(&name);
        let pool = PgPoolOptions::new().max_connections(8).connect_with(options.clone()).await.expect("connect");
        rlt_server::db::MIGRATOR.run(&pool).await.expect("migrations apply to an empty database");
        TestDb { pool, name, options }
    }

    /// A libpq URL of this database, for child processes.
    pub fn url(&self) -> String {
        let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
        let (head, query) = match base.split_once('?') {
            Some((h, q)) => (h.to_owned(), format!("?{q}")),
            None => (base.clone(), String::new()),
        };
        let server = head.rsplit_once('/').map_or(head.as_str(), |(s, _)| s);
        format!("{server}/{}{query}", self.name)
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&self.pool).await.expect("count")
    }
}

/// The real HTTP app on 127.0.0.1 with an ephemeral port.
pub struct TestApp {
    pub db: TestDb,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with_workers(0).await
    }

    /// The app plus `workers` in-process job workers (CPU, 5 s leases).
    pub async fn spawn_with_workers(workers: usize) -> Self {
        let db = TestDb::new().await;
        let registry = Arc::new(Registry::standard());
        let events = EventHub::start(db.pool.clone());
        let artifacts_dir = std::env::temp_dir().join(format!("rlt-artifacts-{}", db.name));
        let artifacts =
            rlt_server::artifacts::Artifacts::open(Some(&format!("file://{}", artifacts_dir.display())), &data_dir())
                .expect("local artifact store");
        for _ in 0..workers {
            let config = rlt_server::jobs::worker::WorkerConfig::new(
                rlt_server::jobs::worker::WorkerDevice::Cpu,
                data_dir(),
                artifacts.clone(),
                std::time::Duration::from_secs(5),
            );
            // The sender lives as long as the test process, so workers keep running.
            let (stop, stopped) = tokio::sync::watch::channel(false);
            std::mem::forget(stop);
            tokio::spawn(rlt_server::jobs::worker::run(
                db.pool.clone(),
                registry.clone(),
                events.clone(),
                config,
                stopped,
            ));
        }
        let ctx = ApiContext {
            db: db.pool.clone(),
            config: Arc::new(HttpConfig { data_dir: data_dir(), static_dir: workspace_root().join("static") }),
            registry,
            events,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            rlt_server::http::serve(ctx, "127.0.0.1:0".parse().unwrap(), std::future::pending(), move |addr| {
                tx.send(addr).ok();
            })
            .await
            .expect("server runs");
        });
        let addr = rx.await.expect("server reports its address");
        TestApp { db, addr, client: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self.get(path).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self.client.post(self.url(path)).json(body).send().await.expect("POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}

/// The default model file fetched by `make assets`.
pub fn default_model_file() -> PathBuf {
    let path = data_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing; run `make assets` (or `make test`)", path.display());
    path
}

/// Registers the real default model (its real sha256 and architecture,
/// read from the file) and returns its id.
pub async fn register_default_model(pool: &PgPool) -> i64 {
    default_model_file();
    rlt_server::models::ensure_default(pool, &data_dir()).await.expect("register the default model").id
}

impl TestApp {
    /// Polls a job until it reaches a final status (or panics after `secs`).
    pub async fn wait_for_job(&self, id: i64, secs: u64) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let (_, job) = self.get_json(&format!("/api/v1/jobs/{id}")).await;
            if matches!(job["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return job;
            }
            assert!(std::time::Instant::now() < deadline, "job {id} did not finish in {secs} s: {job}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// A synthetic dataset, the default model and an experiment with a small
    /// sampling budget; returns (experiment id, run id, question ids).
    pub async fn small_experiment(&self, questions: usize, config: serde_json::Value) -> (i64, i64, Vec<i64>) {
        let model = register_default_model(&self.db.pool).await;
        let name = format!("arith-{}", uuid::Uuid::new_v4().simple());
        let (status, ds) = self
            .post_json(
                "/api/v1/datasets",
                &serde_json::json!({"source": "synthetic", "name": name, "seed": 11, "count": questions}),
            )
            .await;
        assert_eq!(status, 201, "{ds}");
        let (_, page) = self.get_json(&format!("/api/v1/datasets/{}/questions?limit=500", ds["id"])).await;
        let qids: Vec<i64> = page["items"].as_array().unwrap().iter().map(|q| q["id"].as_i64().unwrap()).collect();
        let (status, exp) = self
            .post_json(
                "/api/v1/experiments",
                &serde_json::json!({"name": name, "teacher_model_id": model, "student_model_id": model,
                                    "dataset_id": ds["id"], "config": config}),
            )
            .await;
        assert_eq!(status, 201, "{exp}");
        let (status, run) =
            self.post_json(&format!("/api/v1/experiments/{}/runs", exp["id"]), &serde_json::json!({"seed": 5})).await;
        assert_eq!(status, 201, "{run}");
        (exp["id"].as_i64().unwrap(), run["id"].as_i64().unwrap(), qids)
    }
}
