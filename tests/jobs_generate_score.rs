//! Generate and score jobs end to end: real model, real Postgres, real
//! workers, including a worker killed with SIGKILL mid-job.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rlt_tests::{TestApp, data_dir, rlt_binary};
use serde_json::{Value, json};

/// Small budgets keep a CPU run to seconds.
fn config(samples: u32, max_new_tokens: u32, score: bool) -> Value {
    json!({"sampling": {"num_samples": samples, "max_new_tokens": max_new_tokens, "temperature": 0.9},
           "score_after_generate": score})
}

async fn submit(app: &TestApp, kind: &str, params: Value) -> i64 {
    let (status, job) = app.post_json("/api/v1/jobs", &json!({"kind": kind, "params": params})).await;
    assert_eq!(status, 201, "{job}");
    job["id"].as_i64().unwrap()
}

#[tokio::test]
async fn generate_then_score_stores_explanations_rewards_and_metrics() {
    let app = TestApp::spawn_with_workers(1).await;
    let (_, run, qids) = app.small_experiment(3, config(2, 24, true)).await;
    let job = submit(&app, "generate", json!({"run_id": run, "limit": 2})).await;

    // Follow it over SSE while it runs: progress events, then the end.
    let sse = app.get(&format!("/api/v1/jobs/{job}/events")).await;
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(Duration::from_secs(300), sse.text())
        .await
        .expect("the stream ends with the job")
        .unwrap();
    assert!(body.contains("event: job"), "{body}");
    assert!(body.contains("event: end\ndata: succeeded"), "{body}");
    let finished = app.wait_for_job(job, 10).await;
    assert_eq!((finished["status"].as_str(), finished["progress_done"].as_i64()), (Some("succeeded"), Some(2)));

    let (_, page) = app.get_json(&format!("/api/v1/explanations?run_id={run}")).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "2 questions x 2 samples");
    let keys: BTreeSet<(i64, i64)> =
        items.iter().map(|e| (e["question_id"].as_i64().unwrap(), e["sample_index"].as_i64().unwrap())).collect();
    assert_eq!(keys.len(), 4);
    assert!(keys.iter().all(|(q, _)| qids[..2].contains(q)), "only the first two questions");
    for e in items {
        assert!(e["reward"].as_f64().unwrap().is_finite(), "scored right away: {e}");
        assert!(e["seed"].as_i64().is_some());
        assert!(e["num_tokens"].as_i64().unwrap() <= 24 + 1);
    }
    let (_, detail) = app.get_json(&format!("/api/v1/explanations/{}", items[0]["id"])).await;
    assert_eq!(detail["sampling"]["num_samples"], 2);
    let reward = &detail["rewards"][0];
    assert_eq!(
        reward["solution_logprobs"].as_array().unwrap().len() as u64,
        reward["solution_tokens"].as_u64().unwrap()
    );
    assert_eq!(reward["thought_kl"].as_array().unwrap().len() as u64, reward["thought_tokens"].as_u64().unwrap());

    let (_, metrics) = app.get_json(&format!("/api/v1/runs/{run}/metrics")).await;
    let names: BTreeSet<&str> = metrics.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    for name in ["generate/reward_mean", "generate/reward_std", "generate/tokens_per_s", "generate/clipped_rate"] {
        assert!(names.contains(name), "{name} in {names:?}");
    }

    // Re-scoring with the same config stores nothing new; another config
    // adds a second reward per explanation and keeps the first.
    let again = submit(&app, "score", json!({"run_id": run})).await;
    assert_eq!(app.wait_for_job(again, 120).await["status"], "succeeded");
    assert_eq!(app.db.count("rewards").await, 4);
    let other = submit(&app, "score", json!({"run_id": run, "reward_config": {"thought_kl_coefs": [1.0, 0.0]}})).await;
    assert_eq!(app.wait_for_job(other, 300).await["status"], "succeeded");
    assert_eq!(app.db.count("rewards").await, 8);
    let (_, detail) = app.get_json(&format!("/api/v1/explanations/{}", items[0]["id"])).await;
    let rewards = detail["rewards"].as_array().unwrap();
    assert_eq!(rewards.len(), 2);
    let (_, listed) = app.get_json(&format!("/api/v1/explanations/{}/rewards", items[0]["id"])).await;
    assert_eq!(&listed, &detail["rewards"]);
    assert_ne!(rewards[0]["reward_config_hash"], rewards[1]["reward_config_hash"]);

    // Reference explanations of questions can be scored too.
    let (_, logs) = app.get_json(&format!("/api/v1/jobs/{job}/logs")).await;
    assert!(
        logs.as_array().unwrap().iter().any(|l| l["message"].as_str().unwrap().contains("generating 2 explanations"))
    );
}

#[tokio::test]
async fn job_params_are_checked_at_submit() {
    let app = TestApp::spawn().await;
    let (_, run, _) = app.small_experiment(2, config(1, 8, false)).await;
    for (params, field) in [
        (json!({}), "params.run_id"),
        (json!({"run_id": 99999}), "run_id"),
        (json!({"run_id": run, "question_ids": [123456789]}), "params.question_ids"),
        (json!({"run_id": run, "limit": 0}), "params.limit"),
        (json!({"run_id": run, "bogus": 1}), "params.bogus"),
    ] {
        let (status, err) = app.post_json("/api/v1/jobs", &json!({"kind": "generate", "params": params})).await;
        assert_eq!((status, err["error"]["field"].as_str()), (422, Some(field)), "{params}: {err}");
    }
    for (params, field) in [
        (json!({}), "params"),
        (json!({"run_id": run, "question_ids": [1]}), "params"),
        (json!({"question_ids": []}), "params.question_ids"),
        (
            json!({"run_id": run, "reward_config": {"student_temperature": 0}}),
            "params.reward_config.student_temperature",
        ),
        (json!({"run_id": run, "teacher_model_id": 4242}), "params.teacher_model_id"),
    ] {
        let (status, err) = app.post_json("/api/v1/jobs", &json!({"kind": "score", "params": params})).await;
        assert_eq!((status, err["error"]["field"].as_str()), (422, Some(field)), "{params}: {err}");
    }
}

#[tokio::test]
async fn cancel_stops_a_running_job_within_seconds() {
    let app = TestApp::spawn_with_workers(1).await;
    let (_, run, _) = app.small_experiment(4, config(4, 2000, false)).await;
    let job = submit(&app, "generate", json!({"run_id": run})).await;
    // Wait until it is really running.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, j) = app.get_json(&format!("/api/v1/jobs/{job}")).await;
        if j["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the job never started: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = Instant::now();
    let (status, j) = app.post_json(&format!("/api/v1/jobs/{job}/cancel"), &json!({})).await;
    assert_eq!((status, j["cancel_requested"].as_bool()), (200, Some(true)), "{j}");
    let done = app.wait_for_job(job, 30).await;
    assert_eq!(done["status"], "cancelled");
    assert!(asked.elapsed() < Duration::from_secs(10), "took {:?}", asked.elapsed());
    // Retry resumes it; cancel it again at once (queued -> cancelled).
    let (status, j) = app.post_json(&format!("/api/v1/jobs/{job}/retry"), &json!({})).await;
    assert_eq!(status, 200, "{j}");
    let (_, j) = app.post_json(&format!("/api/v1/jobs/{job}/cancel"), &json!({})).await;
    assert!(j["cancel_requested"].as_bool().unwrap());
    assert_eq!(app.wait_for_job(job, 30).await["status"], "cancelled");
}

fn spawn_worker(db_url: &str, lease_secs: &str) -> Child {
    Command::new(rlt_binary())
        .args(["worker", "--lease-secs", lease_secs])
        .env("DATABASE_URL", db_url)
        .env("RLT_DATA_DIR", data_dir())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rlt worker")
}

#[tokio::test]
async fn a_killed_worker_leaves_a_job_another_worker_finishes_exactly_once() {
    let app = TestApp::spawn().await;
    let (_, run, qids) = app.small_experiment(6, config(2, 16, false)).await;
    let job = submit(&app, "generate", json!({"run_id": run})).await;
    let url = app.db.url();
    let mut first = spawn_worker(&url, "2");
    // Let it store some questions, then kill it without warning.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let stored = app.db.count("explanations WHERE origin = 'teacher'").await;
        if stored >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the first worker stored nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill().expect("SIGKILL the worker");
    first.wait().unwrap();
    let (_, j) = app.get_json(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(j["status"], "running", "the dead worker's job still looks running until its lease expires");

    let mut second = spawn_worker(&url, "2");
    let done = app.wait_for_job(job, 300).await;
    second.kill().ok();
    second.wait().ok();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2, "claimed again after the lease expired");
    let rows: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT question_id, sample_index FROM explanations WHERE run_id = $1 ORDER BY question_id, sample_index",
    )
    .bind(run)
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let expected: Vec<(i64, i32)> = qids.iter().flat_map(|&q| [(q, 0), (q, 1)]).collect();
    assert_eq!(rows, expected, "every question's explanations exactly once");
}

#[tokio::test]
async fn score_endpoint_scores_and_rejects_bad_input() {
    let app = TestApp::spawn().await;
    let item = json!({"question": "What is 2 + 2?", "solution": "2 + 2 = 4.", "completion": "Two plus two is four.<|end_of_explanation|>"});
    let (status, results) = app
        .post_json(
            "/api/v1/score",
            &json!({"items": [item, {"question": "Q", "solution": "S", "completion": "unfinished"}]}),
        )
        .await;
    assert_eq!(status, 200, "{results}");
    let results = results.as_array().unwrap();
    assert!(results[0]["reward"].as_f64().unwrap().is_finite());
    assert_eq!(results[0]["match_penalty"], 0.0);
    assert_eq!(results[1]["match_penalty"], -1.0);
    assert_eq!(
        results[0]["solution_token_texts"].as_array().unwrap().len() as u64,
        results[0]["solution_tokens"].as_u64().unwrap()
    );

    let too_many: Vec<Value> = (0..17).map(|_| item.clone()).collect();
    for (body, field) in [
        (json!({"items": []}), "items"),
        (json!({"items": too_many}), "items"),
        (json!({"items": [{"question": " ", "solution": "s", "completion": "c"}]}), "items[0].question"),
        (json!({"items": [item], "reward_config": {"teacher_temperature": 0}}), "reward_config.teacher_temperature"),
        (json!({"items": [item], "teacher_model_id": 777}), "teacher_model_id"),
    ] {
        let (status, err) = app.post_json("/api/v1/score", &body).await;
        assert_eq!((status, err["error"]["field"].as_str()), (422, Some(field)), "{err}");
    }
    let (status, err) = app.post_json("/api/v1/score", &json!({"items": [{"question": "q"}]})).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("items[0].solution")), "{err}");
}
