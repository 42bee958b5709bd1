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
        let db = TestDb::new().await;
        let ctx = ApiContext {
            db: db.pool.clone(),
            config: Arc::new(HttpConfig { data_dir: data_dir(), static_dir: workspace_root().join("static") }),
            registry: Arc::new(Registry::standard()),
            events: EventHub::start(db.pool.clone()),
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

/// Registers the real default model (by its real sha256) and returns its id.
pub async fn register_default_model(pool: &PgPool) -> i64 {
    use sha2::{Digest, Sha256};
    let path = default_model_file();
    let bytes = std::fs::read(&path).expect("read model");
    let sha = hex::encode(Sha256::digest(&bytes));
    rlt_server::models::upsert(pool, "SmolLM2-135M-Instruct", "gguf", &path.display().to_string(), &sha, "llama")
        .await
        .expect("register model")
        .id
}
