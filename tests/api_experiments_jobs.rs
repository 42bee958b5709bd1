//! REST API for models, experiments, config versions, runs and jobs, with
//! their bad inputs, and the OpenAPI document that describes them.

use rlt_tests::{TestApp, register_default_model};
use serde_json::{Value, json};

async fn setup() -> (TestApp, i64, i64) {
    let app = TestApp::spawn().await;
    let model = register_default_model(&app.db.pool).await;
    let (status, ds) =
        app.post_json("/api/v1/datasets", &json!({"source": "synthetic", "name": "arith", "count": 10})).await;
    assert_eq!(status, 201);
    (app, model, ds["id"].as_i64().unwrap())
}

fn experiment(model: i64, dataset: i64) -> Value {
    json!({"name": "exp", "teacher_model_id": model, "student_model_id": model, "dataset_id": dataset})
}

#[tokio::test]
async fn experiment_defaults_versions_and_runs() {
    let (app, model, dataset) = setup().await;
    let (status, exp) = app.post_json("/api/v1/experiments", &experiment(model, dataset)).await;
    assert_eq!(status, 201, "{exp}");
    assert_eq!(exp["version"], 1);
    assert_eq!(exp["config"]["reward"]["thought_kl_coefs"], json!([3.0, 0.03]));
    assert_eq!(exp["config"]["reward"]["tags"]["begin_explanation"], "<|begin_of_explanation|>");
    let id = exp["id"].as_i64().unwrap();
    let v1_hash = exp["config_hash"].as_str().unwrap().to_owned();

    // A run on version 1 records provenance.
    let (status, run) = app.post_json(&format!("/api/v1/experiments/{id}/runs"), &json!({"seed": 42})).await;
    assert_eq!(status, 201, "{run}");
    assert_eq!((run["config_version"].as_i64(), run["seed"].as_i64()), (Some(1), Some(42)));
    assert_eq!(run["config_hash"], v1_hash.as_str());
    let (_, models) = app.get_json("/api/v1/models").await;
    assert_eq!(run["teacher_sha256"], models[0]["sha256"]);
    assert!(!run["code_version"].as_str().unwrap().is_empty());

    // An edit makes version 2; version 1 and its run are untouched.
    let mut config = exp["config"].clone();
    config["sampling"]["num_samples"] = json!(8);
    let (status, v2) = app.post_json(&format!("/api/v1/experiments/{id}/configs"), &json!({"config": config})).await;
    assert_eq!(status, 201, "{v2}");
    assert_eq!(v2["version"], 2);
    assert_ne!(v2["config_hash"], v1_hash.as_str());
    let (_, versions) = app.get_json(&format!("/api/v1/experiments/{id}/configs")).await;
    assert_eq!(versions[0]["config"]["sampling"]["num_samples"], 4);
    assert_eq!((versions[0]["run_count"].as_i64(), versions[1]["run_count"].as_i64()), (Some(1), Some(0)));
    let (_, again) = app.get_json(&format!("/api/v1/runs/{}", run["id"])).await;
    assert_eq!(again["config_hash"], v1_hash.as_str());

    // The stored config cannot be changed behind the API's back either.
    let err = sqlx::query("UPDATE experiment_configs SET config = '{}' WHERE experiment_id = $1")
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");

    // Runs list and default version.
    let (_, run2) = app.post_json(&format!("/api/v1/experiments/{id}/runs"), &json!({})).await;
    assert_eq!(run2["config_version"], 2);
    let (_, runs) = app.get_json(&format!("/api/v1/runs?experiment_id={id}")).await;
    assert_eq!(runs.as_array().unwrap().len(), 2);
    let (status, metrics) = app.get_json(&format!("/api/v1/runs/{}/metrics", run["id"])).await;
    assert_eq!((status, metrics), (200, json!([])));
}

#[tokio::test]
async fn experiment_bad_inputs() {
    let (app, model, dataset) = setup().await;
    let post = |body: Value| {
        let app = &app;
        async move { app.post_json("/api/v1/experiments", &body).await }
    };
    let mut body = experiment(model, dataset);
    body["teacher_model_id"] = json!(9999);
    let (status, err) = post(body).await;
    assert_eq!((status, err["error"]["field"].as_str()), (422, Some("teacher_model_id")), "{err}");
    let mut body = experiment(model, dataset);
    body["dataset_id"] = json!(9999);
    assert_eq!(post(body).await.1["error"]["field"], "dataset_id");
    let mut body = experiment(model, dataset);
    body["config"] = json!({"sampling": {"top_p": 0}});
    let (status, err) = post(body).await;
    assert_eq!((status, err["error"]["field"].as_str()), (422, Some("config.sampling.top_p")), "{err}");
    let mut body = experiment(model, dataset);
    body["config"] = json!({"samplin": {}});
    let (status, err) = post(body).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("config.samplin")), "{err}");
    let mut body = experiment(model, dataset);
    body["question_ids"] = json!([1_000_000]);
    assert_eq!(post(body).await.1["error"]["field"], "question_ids");
    let mut body = experiment(model, dataset);
    body["name"] = json!("");
    assert_eq!(post(body).await.0, 422);
    let (status, err) = post(json!({"name": "x"})).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("teacher_model_id")), "{err}");
    let (status, _) = app.post_raw("/api/v1/experiments", "application/json", b"[".to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(post(experiment(model, dataset)).await.0, 201);
    let (status, err) = post(experiment(model, dataset)).await;
    assert_eq!((status, err["error"]["field"].as_str()), (409, Some("name")));

    let (status, _) = app.get_json("/api/v1/experiments/424242").await;
    assert_eq!(status, 404);
    let (status, err) = app.post_json("/api/v1/experiments/424242/runs", &json!({})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (404, Some("not_found")));
    let (_, list) = app.get_json("/api/v1/experiments").await;
    let id = list[0]["id"].as_i64().unwrap();
    let (status, err) = app.post_json(&format!("/api/v1/experiments/{id}/runs"), &json!({"config_version": 7})).await;
    assert_eq!((status, err["error"]["field"].as_str()), (422, Some("config_version")));
    let (status, err) = app.post_json(&format!("/api/v1/experiments/{id}/runs"), &json!({"seed": -1})).await;
    assert_eq!((status, err["error"]["field"].as_str()), (422, Some("seed")));
    let (status, err) = app
        .post_json(
            &format!("/api/v1/experiments/{id}/configs"),
            &json!({"config": {"reward": {"teacher_temperature": -1}}}),
        )
        .await;
    assert_eq!((status, err["error"]["field"].as_str()), (422, Some("config.reward.teacher_temperature")), "{err}");
    let (status, _) = app.get_json("/api/v1/runs/424242").await;
    assert_eq!(status, 404);
    let (status, err) = app.get_json("/api/v1/runs?experiment_id=abc").await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("experiment_id")));
    let (status, _) = app.get_json("/api/v1/models/424242").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn job_endpoints_reject_bad_input() {
    let app = TestApp::spawn().await;
    let (status, err) = app.post_json("/api/v1/jobs", &json!({"kind": "no-such-kind"})).await;
    assert_eq!((status, err["error"]["field"].as_str()), (422, Some("kind")), "{err}");
    let (status, err) = app.post_json("/api/v1/jobs", &json!({"params": {}})).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("kind")), "{err}");
    let (status, err) = app.post_json("/api/v1/jobs", &json!({"kind": "x", "device": "tpu"})).await;
    assert_eq!((status, err["error"]["field"].as_str()), (400, Some("device")), "{err}");
    for path in ["/api/v1/jobs/424242", "/api/v1/jobs/424242/logs"] {
        let (status, err) = app.get_json(path).await;
        assert_eq!((status, err["error"]["code"].as_str()), (404, Some("not_found")), "{path}");
    }
    for path in ["/api/v1/jobs/424242/cancel", "/api/v1/jobs/424242/retry"] {
        let (status, _) = app.post_json(path, &json!({})).await;
        assert_eq!(status, 404, "{path}");
    }
    let resp = app.get("/api/v1/jobs/424242/events").await;
    assert_eq!(resp.status().as_u16(), 404);
    for (query, field) in
        [("limit=0", "limit"), ("limit=x", "limit"), ("cursor=-3", "cursor"), ("status=done", "status")]
    {
        let (status, err) = app.get_json(&format!("/api/v1/jobs?{query}")).await;
        assert_eq!((status, err["error"]["field"].as_str()), (400, Some(field)), "{query}: {err}");
    }
    let (status, page) = app.get_json("/api/v1/jobs").await;
    assert_eq!((status, page["items"].clone()), (200, json!([])));
    let (status, kinds) = app.get_json("/api/v1/job-kinds").await;
    assert_eq!(status, 200);
    assert!(kinds.is_array());
    let resp = app.client.delete(app.url("/api/v1/jobs")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn openapi_document_covers_the_api() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.get_json("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/datasets",
        "/datasets/{id}",
        "/datasets/{id}/questions",
        "/questions/{id}",
        "/models",
        "/experiments",
        "/experiments/{id}/configs",
        "/experiments/{id}/runs",
        "/runs/{id}/metrics",
        "/runs/{id}/metrics/stream",
        "/jobs",
        "/jobs/{id}/cancel",
        "/jobs/{id}/retry",
        "/jobs/{id}/logs",
        "/jobs/{id}/events",
        "/job-kinds",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    // Every documented GET without parameters answers (no undocumented 404s).
    for (path, item) in paths {
        if item.get("get").is_some() && !path.contains('{') {
            let status = app.get(&format!("/api/v1{path}")).await.status().as_u16();
            assert_eq!(status, 200, "GET {path}");
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in ["ErrorBody", "Job", "Experiment", "ExperimentConfig", "DatasetSummary"] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
    let page = app.get("/api/v1/docs").await.text().await.unwrap();
    assert!(page.contains("/api/v1/openapi.json"));
}

#[tokio::test]
async fn explanation_endpoints_filter_and_reject_bad_input() {
    let app = TestApp::spawn().await;
    // CHAMP-style references come with a JSONL import too.
    let rows = [
        json!({"question": "1+1?", "solution": "2", "reasoning_trace": "one and one"}),
        json!({"question": "2+2?", "solution": "4"}),
    ];
    let content = rows.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    let (_, ds) =
        app.post_json("/api/v1/datasets", &json!({"source": "jsonl", "name": "refs", "content": content})).await;
    let (status, page) = app.get_json(&format!("/api/v1/explanations?dataset_id={}&origin=reference", ds["id"])).await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["completion"], "one and one");
    assert_eq!(items[0]["reward"], Value::Null, "not scored yet");
    let (_, none) = app.get_json("/api/v1/explanations?origin=teacher").await;
    assert_eq!(none["items"], json!([]));
    let (_, unannotated) = app.get_json("/api/v1/explanations?has_annotation=false").await;
    assert_eq!(unannotated["items"].as_array().unwrap().len(), 1);
    let (_, annotated) = app.get_json("/api/v1/explanations?has_annotation=true").await;
    assert_eq!(annotated["items"], json!([]));
    let (_, scored) = app.get_json("/api/v1/explanations?min_reward=-5").await;
    assert_eq!(scored["items"], json!([]), "unscored explanations have no reward to compare");
    let (status, detail) = app.get_json(&format!("/api/v1/explanations/{}", items[0]["id"])).await;
    assert_eq!((status, detail["rewards"].clone()), (200, json!([])));

    for (query, field) in [
        ("origin=model", "origin"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=abc", "cursor"),
        ("min_reward=low", "min_reward"),
        ("has_annotation=maybe", "has_annotation"),
        ("run_id=1.5", "run_id"),
    ] {
        let (status, err) = app.get_json(&format!("/api/v1/explanations?{query}")).await;
        assert_eq!((status, err["error"]["field"].as_str()), (400, Some(field)), "{query}: {err}");
    }
    let (status, _) = app.get_json("/api/v1/explanations/424242").await;
    assert_eq!(status, 404);
    let (status, _) = app.get_json("/api/v1/explanations/424242/rewards").await;
    assert_eq!(status, 404);
}
