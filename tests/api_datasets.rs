//! REST API for datasets and questions, against a real Postgres.

use rlt_tests::{TestApp, champ_file};
use serde_json::{Value, json};

fn jsonl_lines(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| json!({"question": format!("What is {i} + {i}?"), "solution": format!("{}", 2 * i)}).to_string())
        .collect()
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!((status, body["database"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn synthetic_import_lists_and_pages() {
    let app = TestApp::spawn().await;
    let (status, ds) = app
        .post_json("/api/v1/datasets", &json!({"source": "synthetic", "name": "arith", "seed": 3, "count": 120}))
        .await;
    assert_eq!(status, 201, "{ds}");
    assert_eq!(ds["question_count"], 120);
    let id = ds["id"].as_i64().unwrap();

    let (_, list) = app.get_json("/api/v1/datasets").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "arith");

    // Walk every page with the cursor and see each question exactly once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/datasets/{id}/questions?limit=50&cursor={c}"),
            None => format!("/api/v1/datasets/{id}/questions?limit=50"),
        };
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["items"].as_array().unwrap().iter().map(|q| q["ordinal"].as_i64().unwrap()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (0..120).collect::<Vec<_>>());

    // The same seed gives the same questions as a second import.
    let (_, again) = app
        .post_json("/api/v1/datasets", &json!({"source": "synthetic", "name": "arith-2", "seed": 3, "count": 120}))
        .await;
    let (_, a) = app.get_json(&format!("/api/v1/datasets/{id}/questions?limit=5")).await;
    let (_, b) = app.get_json(&format!("/api/v1/datasets/{}/questions?limit=5", again["id"])).await;
    let texts = |p: &Value| p["items"].as_array().unwrap().iter().map(|q| q["question"].clone()).collect::<Vec<_>>();
    assert_eq!(texts(&a), texts(&b));
}

#[tokio::test]
async fn champ_import_keeps_reference_explanations() {
    champ_file();
    let app = TestApp::spawn().await;
    let (status, ds) = app.post_json("/api/v1/datasets", &json!({"source": "champ"})).await;
    assert_eq!(status, 201, "{ds}");
    assert_eq!(ds["name"], "champ");
    assert_eq!(ds["question_count"], 270);
    let refs = ds["reference_count"].as_i64().unwrap();
    assert!(refs >= 500, "CHAMP ships several annotated model solutions per annotated problem, got {refs}");

    let (_, page) =
        app.get_json(&format!("/api/v1/datasets/{}/questions?q=P_Combinatorics_1&limit=500", ds["id"])).await;
    let q = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["source_key"] == "P_Combinatorics_1")
        .expect("found by id")
        .clone();
    assert_eq!(q["answer"], "239");
    let (status, detail) = app.get_json(&format!("/api/v1/questions/{}", q["id"])).await;
    assert_eq!(status, 200);
    assert!(detail["question"].as_str().unwrap().starts_with("Let a string consist of digit 1, 2, 3."));
    assert!(detail["solution"].as_str().unwrap().contains("x_6+y_6+z_6=70+99+70=239"));
    let authors: Vec<&str> =
        detail["references"].as_array().unwrap().iter().filter_map(|r| r["author"].as_str()).collect();
    assert!(authors.contains(&"GPT-3.5"), "{authors:?}");
}

#[tokio::test]
async fn jsonl_bad_line_57_reports_it_and_imports_nothing() {
    let app = TestApp::spawn().await;
    let mut lines = jsonl_lines(80);
    lines[56] = json!({"question": "missing its solution"}).to_string();
    let before = (app.db.count("datasets").await, app.db.count("questions").await);
    let (status, body) =
        app.post_raw("/api/v1/datasets?name=broken", "application/x-ndjson", lines.join("\n").into_bytes()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["line"], 57);
    assert_eq!(body["error"]["field"], "solution");
    assert!(body["error"]["message"].as_str().unwrap().contains("line 57"));
    assert_eq!((app.db.count("datasets").await, app.db.count("questions").await), before);
}

#[tokio::test]
async fn jsonl_bad_inputs_name_line_and_field() {
    let app = TestApp::spawn().await;
    let good = json!({"question": "q", "solution": "s"}).to_string();
    let huge = json!({"question": "x".repeat(3 * 1024 * 1024), "solution": "s"}).to_string();
    // (case, file content, expected line, expected field, words in the message)
    type Case<'a> = (&'a str, String, Option<u64>, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed", format!("{good}\n{{\"question\": \"q\", "), Some(2), None, "malformed JSON"),
        (
            "wrong type",
            format!("{good}\n{good}\n{}", json!({"question": "q", "solution": true})),
            Some(3),
            Some("solution"),
            "must be a string",
        ),
        ("not an object", format!("[1, 2]\n{good}"), Some(1), None, "JSON object"),
        ("empty", String::new(), None, None, "empty"),
        ("blank", "\n \n".to_owned(), None, None, "empty"),
        ("huge line", format!("{good}\n{huge}"), Some(2), None, "limit"),
        ("empty question", json!({"question": "  ", "solution": "s"}).to_string(), Some(1), Some("question"), "empty"),
    ];
    for (what, body, line, field, needle) in cases {
        let (status, resp) =
            app.post_json("/api/v1/datasets", &json!({"source": "jsonl", "name": what, "content": body})).await;
        assert_eq!(status, 422, "{what}: {resp}");
        assert_eq!(resp["error"]["line"].as_u64(), line, "{what}: {resp}");
        assert_eq!(resp["error"]["field"].as_str(), field, "{what}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
    }
    assert_eq!(app.db.count("datasets").await, 0);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let app = TestApp::spawn().await;
    // Malformed body, unknown source, missing field, wrong type, bad count.
    let (status, body) = app.post_raw("/api/v1/datasets", "application/json", b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("malformed JSON"));
    let (status, body) = app.post_json("/api/v1/datasets", &json!({"source": "csv", "name": "x"})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("source")), "{body}");
    let (status, body) = app.post_json("/api/v1/datasets", &json!({"name": "x"})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("source")), "{body}");
    let (status, body) =
        app.post_json("/api/v1/datasets", &json!({"source": "jsonl", "name": "x", "contents": ""})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("contents")), "{body}");
    let (status, body) = app.post_json("/api/v1/datasets", &json!({"source": "synthetic"})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("name")), "{body}");
    let (status, body) =
        app.post_json("/api/v1/datasets", &json!({"source": "synthetic", "name": "a", "count": "ten"})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("count")), "{body}");
    let (status, body) =
        app.post_json("/api/v1/datasets", &json!({"source": "synthetic", "name": "a", "count": 0})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("count")), "{body}");
    let (status, body) = app.post_json("/api/v1/datasets", &json!({"source": "synthetic", "name": " padded "})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("name")), "{body}");
    let (status, _) = app.post_raw("/api/v1/datasets", "application/x-ndjson", b"{}".to_vec()).await;
    assert_eq!(status, 400, "raw JSONL needs ?name=");
    let (status, _) = app.post_raw("/api/v1/datasets", "image/png", b"x".to_vec()).await;
    assert_eq!(status, 400);

    // NUL cannot be stored in Postgres text: a 400, in a query string or a body.
    let (status, body) = app.get_json("/api/v1/datasets/1/questions?q=a%00b").await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("q")), "{body}");
    let (status, body) =
        app.post_json("/api/v1/datasets", &json!({"source": "synthetic", "name": "nul\u{0}name", "count": 3})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(app.db.count("datasets").await, 0, "nothing half-written");

    // Duplicate names conflict.
    let make = json!({"source": "synthetic", "name": "dup", "count": 3});
    assert_eq!(app.post_json("/api/v1/datasets", &make).await.0, 201);
    let (status, body) = app.post_json("/api/v1/datasets", &make).await;
    assert_eq!((status, body["error"]["field"].as_str()), (409, Some("name")), "{body}");

    // Unknown ids, bad ids, bad paging parameters.
    let (status, body) = app.get_json("/api/v1/datasets/999999").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    let (status, body) = app.get_json("/api/v1/datasets/abc").await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("id")), "{body}");
    let (status, _) = app.get_json("/api/v1/questions/999999").await;
    assert_eq!(status, 404);
    let (status, body) = app.get_json("/api/v1/datasets/1/questions?limit=0").await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("limit")), "{body}");
    let (status, body) = app.get_json("/api/v1/datasets/1/questions?limit=many").await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("limit")), "{body}");
    let (status, body) = app.get_json("/api/v1/datasets/1/questions?cursor=zz").await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("cursor")), "{body}");
    let (status, body) = app.get_json("/api/v1/no-such-endpoint").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn bespoke_stratos_rows_import() {
    let app = TestApp::spawn().await;
    let row = json!({"system": "…", "conversations": [
        {"from": "user", "value": "Find $x$ if $2x = 6$."},
        {"from": "assistant", "value": "<|begin_of_thought|>\n\nDivide both sides by 2.\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n$x = 3$\n\n<|end_of_solution|>"}
    ]});
    let (status, ds) = app
        .post_json("/api/v1/datasets", &json!({"source": "jsonl", "name": "stratos", "content": row.to_string()}))
        .await;
    assert_eq!(status, 201, "{ds}");
    assert_eq!((ds["question_count"].as_i64(), ds["reference_count"].as_i64()), (Some(1), Some(1)));
    let (_, page) = app.get_json(&format!("/api/v1/datasets/{}/questions", ds["id"])).await;
    let (_, q) = app.get_json(&format!("/api/v1/questions/{}", page["items"][0]["id"])).await;
    assert_eq!(q["solution"], "$x = 3$");
    assert_eq!(q["references"][0]["text"], "Divide both sides by 2.");
}
