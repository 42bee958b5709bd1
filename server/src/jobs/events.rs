//! Live updates through Postgres LISTEN/NOTIFY, so a job's progress reaches
//! every server process (and its SSE clients) whichever machine runs it.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

pub const CHANNEL: &str = "rlt_events";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A job changed: status, progress or cancellation.
    Job { job_id: i64, run_id: Option<i64> },
    /// A job wrote a log line.
    Log { job_id: i64, log_id: i64 },
    /// A run recorded a metric point.
    Metric { run_id: i64, name: String, step: i64, value: f64 },
}

/// Publishes an event; delivered to listeners when the transaction (if any)
/// commits, so nobody sees a change before it is visible.
pub async fn notify<'e, E: sqlx::PgExecutor<'e>>(executor: E, event: &Event) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_string(event).expect("events serialize");
    sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, payload).execute(executor).await?;
    Ok(())
}

/// Fans Postgres notifications out to in-process subscribers.
#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Event>,
}

impl EventHub {
    /// Starts listening; the task reconnects by itself if the connection drops.
    pub fn start(pool: PgPool) -> Self {
        let (sender, _) = broadcast::channel(1024);
        let hub = EventHub { sender: sender.clone() };
        tokio::spawn(async move {
            loop {
                if pool.is_closed() {
                    return;
                }
                if let Err(e) = listen(&pool, &sender).await {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::warn!(error = %e, "event listener lost its connection; reconnecting");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
        hub
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

async fn listen(pool: &PgPool, sender: &broadcast::Sender<Event>) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        let notification = listener.recv().await?;
        match serde_json::from_str::<Event>(notification.payload()) {
            // No subscribers is fine: nobody is watching right now.
            Ok(event) => drop(sender.send(event)),
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed event"),
        }
    }
}
