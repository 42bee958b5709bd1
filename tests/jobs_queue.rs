//! The Postgres job queue: exclusive claims, leases, cancel, retry and
//! backoff, against a real database.

use std::collections::BTreeSet;
use std::time::Duration;

use rlt_server::jobs::queue::{self, ClaimedJob, NewJob, Outcome};
use rlt_tests::TestDb;
use rlt_types::JobStatus;
use serde_json::json;

const KIND: &str = "queue-test";

async fn enqueue(db: &TestDb, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let params = json!({ "i": i });
        let job = queue::submit(
            &db.pool,
            NewJob { kind: KIND, params: &params, run_id: None, device: "any", priority: 0, max_attempts: 2 },
        )
        .await
        .unwrap();
        ids.push(job.id);
    }
    ids
}

async fn claim(db: &TestDb, worker: &str, lease: Duration) -> Option<ClaimedJob> {
    queue::claim(&db.pool, worker, lease, &["any".to_owned(), "cpu".to_owned()], &[KIND.to_owned()]).await.unwrap()
}

#[tokio::test]
async fn concurrent_workers_never_claim_the_same_job() {
    let db = TestDb::new().await;
    let ids = enqueue(&db, 60).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let pool = db.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let worker = format!("w{w}");
            loop {
                let claimed =
                    queue::claim(&pool, &worker, Duration::from_secs(60), &["any".to_owned()], &[KIND.to_owned()])
                        .await
                        .unwrap();
                match claimed {
                    Some(job) => mine.push(job.id),
                    None => return mine,
                }
            }
        }));
    }
    let mut all = Vec::new();
    let mut busy_workers = 0;
    for t in tasks {
        let mine = t.await.unwrap();
        busy_workers += usize::from(!mine.is_empty());
        all.extend(mine);
    }
    let unique: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "a job was claimed twice");
    assert_eq!(unique, ids.into_iter().collect::<BTreeSet<_>>());
    assert!(busy_workers > 1, "the work was shared");
}

#[tokio::test]
async fn device_and_kind_filter_claims() {
    let db = TestDb::new().await;
    let params = json!({});
    let cuda_job = queue::submit(
        &db.pool,
        NewJob { kind: KIND, params: &params, run_id: None, device: "cuda", priority: 0, max_attempts: 1 },
    )
    .await
    .unwrap();
    assert!(claim(&db, "cpu-worker", Duration::from_secs(5)).await.is_none(), "a CPU worker skips CUDA jobs");
    let other = queue::claim(&db.pool, "w", Duration::from_secs(5), &["any".into(), "cuda".into()], &["other".into()])
        .await
        .unwrap();
    assert!(other.is_none(), "a worker only claims kinds it knows");
    let got = queue::claim(&db.pool, "gpu", Duration::from_secs(5), &["any".into(), "cuda".into()], &[KIND.into()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.id, cuda_job.id);
}

#[tokio::test]
async fn expired_lease_is_taken_over_and_the_old_worker_notices() {
    let db = TestDb::new().await;
    let ids = enqueue(&db, 1).await;
    let first = claim(&db, "dead", Duration::from_millis(1000)).await.unwrap();
    assert_eq!((first.id, first.attempt), (ids[0], 1));
    assert!(claim(&db, "other", Duration::from_secs(30)).await.is_none(), "a live lease is respected");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = claim(&db, "other", Duration::from_secs(30)).await.expect("the expired job is claimable");
    assert_eq!((second.id, second.attempt), (ids[0], 2));
    let lost = queue::heartbeat(&db.pool, first.id, "dead", Duration::from_secs(30)).await.unwrap();
    assert_eq!(lost, None, "the old worker learns it lost the job");
    // The old worker's late report does not overwrite the new owner's state.
    queue::finish(&db.pool, &first, "dead", &Outcome::Succeeded).await.unwrap();
    assert_eq!(queue::get(&db.pool, first.id).await.unwrap().status, JobStatus::Running);
    queue::finish(&db.pool, &second, "other", &Outcome::Succeeded).await.unwrap();
    assert_eq!(queue::get(&db.pool, first.id).await.unwrap().status, JobStatus::Succeeded);
}

#[tokio::test]
async fn expired_job_without_attempts_left_is_failed_by_the_reaper() {
    let db = TestDb::new().await;
    enqueue(&db, 1).await;
    let a = claim(&db, "a", Duration::from_millis(500)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let b = claim(&db, "b", Duration::from_millis(500)).await.unwrap();
    assert_eq!(b.attempt, 2);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(claim(&db, "c", Duration::from_secs(5)).await.is_none(), "max_attempts = 2 is used up");
    assert_eq!(queue::reap_expired(&db.pool).await.unwrap(), 1);
    let job = queue::get(&db.pool, a.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.error.unwrap().contains("lease expired"));
}

#[tokio::test]
async fn cancel_queued_and_running_jobs() {
    let db = TestDb::new().await;
    let ids = enqueue(&db, 2).await;
    // Queued: cancelled at once, never claimed.
    let job = queue::request_cancel(&db.pool, ids[0]).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    let running = claim(&db, "w", Duration::from_secs(30)).await.unwrap();
    assert_eq!(running.id, ids[1]);
    // Running: the worker sees the request on its next heartbeat.
    assert_eq!(queue::heartbeat(&db.pool, running.id, "w", Duration::from_secs(30)).await.unwrap(), Some(false));
    let job = queue::request_cancel(&db.pool, running.id).await.unwrap();
    assert_eq!((job.status, job.cancel_requested), (JobStatus::Running, true));
    assert_eq!(queue::heartbeat(&db.pool, running.id, "w", Duration::from_secs(30)).await.unwrap(), Some(true));
    queue::finish(&db.pool, &running, "w", &Outcome::Cancelled).await.unwrap();
    assert_eq!(queue::get(&db.pool, running.id).await.unwrap().status, JobStatus::Cancelled);
    // Cancelling a finished job is a conflict.
    let err = queue::request_cancel(&db.pool, running.id).await.unwrap_err();
    assert_eq!(err.status_code().as_u16(), 409);
}

#[tokio::test]
async fn failures_back_off_then_fail_and_retry_starts_over() {
    let db = TestDb::new().await;
    let ids = enqueue(&db, 1).await;
    let job = claim(&db, "w", Duration::from_secs(30)).await.unwrap();
    let status = queue::finish(&db.pool, &job, "w", &Outcome::Failed("boom".into())).await.unwrap();
    assert_eq!(status, JobStatus::Queued, "one attempt of two used");
    let row = queue::get(&db.pool, ids[0]).await.unwrap();
    assert_eq!(row.error.as_deref(), Some("boom"));
    let run_after = chrono::DateTime::parse_from_rfc3339(&row.run_after).unwrap();
    assert!(run_after > chrono::Utc::now() + chrono::Duration::seconds(3), "retried after a backoff");
    assert!(claim(&db, "w", Duration::from_secs(30)).await.is_none(), "not before the backoff ends");
    sqlx::query("UPDATE jobs SET run_after = now() WHERE id = $1").bind(ids[0]).execute(&db.pool).await.unwrap();
    let job = claim(&db, "w", Duration::from_secs(30)).await.unwrap();
    assert_eq!(job.attempt, 2);
    let status = queue::finish(&db.pool, &job, "w", &Outcome::Failed("boom again".into())).await.unwrap();
    assert_eq!(status, JobStatus::Failed);
    let err = queue::retry(&db.pool, ids[0]).await.map(|_| ()).err();
    assert!(err.is_none(), "a failed job can be retried");
    let row = queue::get(&db.pool, ids[0]).await.unwrap();
    assert_eq!((row.status, row.attempts, row.error), (JobStatus::Queued, 0, None));
    let err = queue::retry(&db.pool, ids[0]).await.unwrap_err();
    assert_eq!(err.status_code().as_u16(), 409, "a queued job cannot be retried");
    assert_eq!(queue::backoff(1), Duration::from_secs(5));
    assert_eq!(queue::backoff(3), Duration::from_secs(20));
    assert_eq!(queue::backoff(50), Duration::from_secs(600));
}

#[tokio::test]
async fn interrupted_job_returns_to_the_queue_without_using_an_attempt() {
    let db = TestDb::new().await;
    let ids = enqueue(&db, 1).await;
    let job = claim(&db, "w", Duration::from_secs(30)).await.unwrap();
    queue::finish(&db.pool, &job, "w", &Outcome::Interrupted).await.unwrap();
    let row = queue::get(&db.pool, ids[0]).await.unwrap();
    assert_eq!((row.status, row.attempts), (JobStatus::Queued, 0));
    assert_eq!(claim(&db, "w2", Duration::from_secs(30)).await.unwrap().attempt, 1);
}
