//! Server-rendered pages read without JavaScript and escape model text.

use rlt_tests::TestApp;
use serde_json::json;

async fn html(app: &TestApp, path: &str) -> (u16, String) {
    let resp = app.get(path).await;
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn first_page_lists_datasets_with_counts_and_links() {
    let app = TestApp::spawn().await;
    let (_, ds) =
        app.post_json("/api/v1/datasets", &json!({"source": "synthetic", "name": "arith-ui", "count": 37})).await;
    let (status, page) = html(&app, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("arith-ui"), "{page}");
    assert!(page.contains(r#"<td class="num question-count">37</td>"#), "{page}");
    let link = format!(r#"href="/datasets/{}""#, ds["id"]);
    assert!(page.contains(&link), "{page}");

    let (status, list) = html(&app, &format!("/datasets/{}", ds["id"])).await;
    assert_eq!(status, 200);
    assert_eq!(list.matches("href=\"/questions/").count(), 37, "all 37 questions fit on the first page");
}

#[tokio::test]
async fn empty_state_says_what_to_do() {
    let app = TestApp::spawn().await;
    let (status, page) = html(&app, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("No datasets yet"));
    assert!(page.contains("rlt import"));
}

#[tokio::test]
async fn model_text_is_escaped() {
    let app = TestApp::spawn().await;
    let evil = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let row = json!({"question": format!("Q {evil}"), "solution": format!("S {evil}"), "reasoning_trace": format!("R {evil}")});
    let (status, ds) = app
        .post_json("/api/v1/datasets", &json!({"source": "jsonl", "name": "evil", "content": row.to_string()}))
        .await;
    assert_eq!(status, 201, "{ds}");
    let (_, page) = app.get_json(&format!("/api/v1/datasets/{}/questions", ds["id"])).await;
    let id = page["items"][0]["id"].as_i64().unwrap();
    for path in [format!("/datasets/{}", ds["id"]), format!("/questions/{id}")] {
        let (status, body) = html(&app, &path).await;
        assert_eq!(status, 200);
        assert!(!body.contains("<script>alert(1)"), "{path} has raw script: {body}");
        assert!(!body.contains("<img src=x"), "{path} has a raw img tag");
        assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{path}: {body}");
    }
}

#[tokio::test]
async fn missing_things_give_404_pages() {
    let app = TestApp::spawn().await;
    let (status, body) = html(&app, "/datasets/424242").await;
    assert_eq!(status, 404);
    assert!(body.contains("dataset 424242 not found"), "{body}");
    let (status, body) = html(&app, "/no/such/page").await;
    assert_eq!(status, 404);
    assert!(body.contains("Page not found"));
}
