//! The HTTP contract of docs/API.md, end to end, on both backends: the embedded
//! SQLite store, and MongoDB with the Redis cache.

#[macro_use]
mod common;

use common::{Backend, TestApp, assert_problem, spawn, spawn_with};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

on_both_backends!(
    created_configs_read_back_with_their_json_types,
    listing_pages_through_configs_sorted_by_name,
    bad_paging_parameters_are_400_naming_the_parameter,
    a_duplicate_name_is_409_and_keeps_the_original,
    reading_a_missing_config_is_a_404_problem,
    put_replaces_data_and_never_creates,
    patch_merges_and_cannot_rename,
    delete_removes_and_then_404s,
    search_matches_typed_values_within_one_element,
    search_rejects_bad_parameters_by_name,
    every_bad_body_is_refused_and_nothing_is_written,
    a_body_over_the_limit_is_413_and_nothing_is_written,
    unknown_paths_are_404_and_wrong_methods_405_with_allow,
    probes_answer,
    metrics_are_on_the_admin_listener_only,
    request_ids_are_echoed_or_created,
);

fn sample(name: &str) -> Value {
    json!({ "name": name, "data": [
        { "id": 4608, "app_name": "Apus", "enabled": true, "ratio": 0.5, "note": null },
        { "id": "1412", "app_name": "Otter", "tags": ["a", "b"], "nested": { "level": { "deep": "yes" } } }
    ]})
}

async fn created_configs_read_back_with_their_json_types(app: TestApp) {
    let response = app
        .request(Method::POST, "/configs")
        .header("content-type", "application/json")
        .body(sample("Mckinney").to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["location"], "/configs/Mckinney");
    let (_, created) = common::into_json(response).await;
    assert_eq!(created, sample("Mckinney"));
    // Twice: the second read is served from the cache on the Redis backend.
    for _ in 0..2 {
        let (status, body) = app.get("/configs/Mckinney").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, sample("Mckinney"));
        assert_eq!(body["data"][0]["id"], json!(4608));
        assert_eq!(body["data"][0]["enabled"], json!(true));
    }
}

async fn listing_pages_through_configs_sorted_by_name(app: TestApp) {
    for name in ["delta", "alpha", "echo", "charlie", "bravo"] {
        app.create(&json!({ "name": name, "data": [] })).await;
    }
    let (status, page) = app.get("/configs?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let names = |page: &Value| -> Vec<String> {
        page["configs"]
            .as_array()
            .expect("array")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_string())
            .collect()
    };
    assert_eq!(names(&page), ["alpha", "bravo"]);
    assert_eq!(page["next"], "bravo");
    let (_, page) = app.get("/configs?limit=2&after=bravo").await;
    assert_eq!(names(&page), ["charlie", "delta"]);
    let (_, page) = app.get("/configs/?limit=2&after=delta").await;
    assert_eq!(names(&page), ["echo"]);
    assert_eq!(page["next"], Value::Null);
    let (_, all) = app.get("/configs").await;
    assert_eq!(names(&all), ["alpha", "bravo", "charlie", "delta", "echo"]);
    assert_eq!(all["configs"][0], json!({ "name": "alpha", "data": [] }));
}

async fn bad_paging_parameters_are_400_naming_the_parameter(app: TestApp) {
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("after=no%20spaces", "after"),
        ("page=2", "page"),
    ] {
        let response = app
            .http
            .get(app.url(&format!("/configs?{query}")))
            .send()
            .await
            .expect("sent");
        let body = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["param"], param, "{query}: {body}");
    }
}

async fn a_duplicate_name_is_409_and_keeps_the_original(app: TestApp) {
    app.create(&sample("dup")).await;
    let response = app
        .request(Method::POST, "/configs")
        .header("content-type", "application/json")
        .body(json!({ "name": "dup", "data": [{ "x": 1 }] }).to_string())
        .send()
        .await
        .expect("sent");
    assert_problem(response, StatusCode::CONFLICT).await;
    assert_eq!(app.get("/configs/dup").await.1, sample("dup"));
}

async fn reading_a_missing_config_is_a_404_problem(app: TestApp) {
    for path in ["/configs/nope", "/configs/not%20a%20name"] {
        let response = app.http.get(app.url(path)).send().await.expect("sent");
        assert_problem(response, StatusCode::NOT_FOUND).await;
    }
}

async fn put_replaces_data_and_never_creates(app: TestApp) {
    app.create(&sample("p")).await;
    let (status, body) = app
        .send_json(Method::PUT, "/configs/p", &json!({ "data": [{ "v": 2 }] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "name": "p", "data": [{ "v": 2 }] }));
    assert_eq!(
        app.get("/configs/p").await.1,
        body,
        "the cache must not serve the old data"
    );
    let (status, _) = app
        .send_json(Method::PUT, "/configs/p", &json!({ "name": "p", "data": [] }))
        .await;
    assert_eq!(status, StatusCode::OK);

    let renamed = app
        .request(Method::PUT, "/configs/p")
        .header("content-type", "application/json")
        .body(json!({ "name": "q", "data": [{ "v": 3 }] }).to_string())
        .send()
        .await
        .expect("sent");
    assert_problem(renamed, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(app.get("/configs/p").await.1, json!({ "name": "p", "data": [] }));

    let missing = app
        .request(Method::PUT, "/configs/ghost")
        .header("content-type", "application/json")
        .body(json!({ "data": [] }).to_string())
        .send()
        .await
        .expect("sent");
    assert_problem(missing, StatusCode::NOT_FOUND).await;
    assert_eq!(app.all_names().await, ["p"]);
}

async fn patch_merges_and_cannot_rename(app: TestApp) {
    app.create(&json!({ "name": "m", "data": [{ "a": 1 }] })).await;
    let response = app
        .request(Method::PATCH, "/configs/m")
        .header("content-type", "application/merge-patch+json")
        .body(json!({ "data": [{ "a": 2 }, { "b": true }] }).to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let expected = json!({ "name": "m", "data": [{ "a": 2 }, { "b": true }] });
    assert_eq!(app.get("/configs/m").await.1, expected);

    for patch in [
        json!({ "name": "other" }),
        json!({ "name": null }),
        json!({ "data": [{ "$set": 1 }] }),
        json!([1]),
    ] {
        let response = app
            .request(Method::PATCH, "/configs/m")
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await
            .expect("sent");
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    assert_eq!(app.get("/configs/m").await.1, expected);
    let (status, _) = app
        .send_json(Method::PATCH, "/configs/ghost", &json!({ "data": [] }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn delete_removes_and_then_404s(app: TestApp) {
    app.create(&sample("d")).await;
    assert_eq!(app.get("/configs/d").await.0, StatusCode::OK);
    let response = app.request(Method::DELETE, "/configs/d").send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/configs/d").await.0,
        StatusCode::NOT_FOUND,
        "the cache must not resurrect it"
    );
    let again = app.request(Method::DELETE, "/configs/d").send().await.expect("sent");
    assert_problem(again, StatusCode::NOT_FOUND).await;
}

async fn search_matches_typed_values_within_one_element(app: TestApp) {
    app.create(&sample("Mckinney")).await;
    app.create(&json!({ "name": "other", "data": [{ "id": 1412, "app_name": "Apus", "enabled": "true" }] }))
        .await;

    let hits = |body: &Value| -> Vec<(String, Value)> {
        assert_eq!(
            body["total"].as_u64().expect("total") as usize,
            body["results"].as_array().expect("results").len()
        );
        body["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| (r["name"].as_str().expect("name").to_string(), r["data"].clone()))
            .collect()
    };
    // "1412" matches the string "1412" and the number 1412.
    let (status, body) = app.get("/search?data.id=1412").await;
    assert_eq!(status, StatusCode::OK);
    let found = hits(&body);
    assert_eq!(found.len(), 2, "{body}");
    assert_eq!(found[0].0, "Mckinney");
    assert_eq!(found[0].1["app_name"], "Otter");
    assert_eq!(found[1].0, "other");
    // A boolean true and the string "true" both match true.
    assert_eq!(hits(&app.get("/search?data.enabled=true").await.1).len(), 2);
    assert_eq!(hits(&app.get("/search?data.note=null").await.1).len(), 1);
    assert_eq!(hits(&app.get("/search?data.ratio=0.5").await.1).len(), 1);
    // All conditions in the same element.
    assert_eq!(
        hits(&app.get("/search?data.id=4608&data.app_name=Apus").await.1).len(),
        1
    );
    assert_eq!(
        hits(&app.get("/search?data.id=4608&data.app_name=Otter").await.1).len(),
        0
    );
    // name narrows; name alone lists every element.
    assert_eq!(hits(&app.get("/search?name=other&data.app_name=Apus").await.1).len(), 1);
    assert_eq!(hits(&app.get("/search?name=Mckinney").await.1).len(), 2);
    // Nested paths and percent-decoding.
    assert_eq!(hits(&app.get("/search?data.nested.level.deep=yes").await.1).len(), 1);
    app.create(&json!({ "name": "spaced", "data": [{ "title": "a b+c" }] }))
        .await;
    assert_eq!(hits(&app.get("/search?data.title=a%20b%2Bc").await.1).len(), 1);
    assert_eq!(hits(&app.get("/search?data.title=a%20b+c").await.1).len(), 1);
    assert_eq!(
        app.get("/search?data.missing=x").await.1,
        json!({ "total": 0, "results": [], "next": null })
    );
}

async fn search_rejects_bad_parameters_by_name(app: TestApp) {
    for (query, param) in [
        ("", "query"),
        ("?q=1", "q"),
        ("?data.$where=1", "data.$where"),
        ("?data.=1", "data."),
        ("?name=a%20b", "name"),
    ] {
        let response = app
            .http
            .get(app.url(&format!("/search{query}")))
            .send()
            .await
            .expect("sent");
        let body = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["param"], param, "{query}: {body}");
    }
}

async fn every_bad_body_is_refused_and_nothing_is_written(app: TestApp) {
    let deep = (0..40).fold(json!(1), |v, _| json!({ "k": v }));
    let very_deep = format!(
        "{{\"name\":\"x\",\"data\":[{}1{}]}}",
        "{\"k\":".repeat(300),
        "}".repeat(300)
    );
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("application/json", "{not json".into(), StatusCode::BAD_REQUEST, ""),
        ("application/json", String::new(), StatusCode::BAD_REQUEST, ""),
        (
            "text/plain",
            sample("x").to_string(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "",
        ),
        (
            "application/x-www-form-urlencoded",
            "name=x".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "",
        ),
        (
            "application/json",
            json!({ "name": "bad name", "data": [] }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/name",
        ),
        (
            "application/json",
            json!({ "name": "x".repeat(129), "data": [] }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/name",
        ),
        (
            "application/json",
            json!({ "data": [] }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/name",
        ),
        (
            "application/json",
            json!({ "name": "x" }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/data",
        ),
        (
            "application/json",
            json!({ "name": "x", "data": { "a": 1 } }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/data",
        ),
        (
            "application/json",
            json!({ "name": "x", "data": ["str"] }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/data/0",
        ),
        (
            "application/json",
            json!({ "name": "x", "data": [{ "$where": "1" }] }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/data/0/$where",
        ),
        (
            "application/json",
            json!({ "name": "x", "data": [{ "a.b": 1 }] }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/data/0/a.b",
        ),
        (
            "application/json",
            json!({ "name": "x", "data": [{ "ok": { "": 1 } }] }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/data/0/ok/",
        ),
        (
            "application/json",
            json!({ "name": "x", "data": [{ "a\u{0}b": 1 }] }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/data/0/a\u{0}b",
        ),
        (
            "application/json",
            json!({ "name": "x", "data": [deep] }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
        ),
        ("application/json", very_deep, StatusCode::UNPROCESSABLE_ENTITY, ""),
        (
            "application/json",
            json!({ "name": "x", "data": [], "extra": 1 }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/extra",
        ),
        (
            "application/json",
            json!({ "name": "x", "data": [{ "n": u64::MAX }] }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/data/0/n",
        ),
    ];
    for (content_type, body, status, pointer) in cases {
        let response = app
            .request(Method::POST, "/configs")
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .expect("sent");
        let problem = assert_problem(response, status).await;
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            let errors = problem["errors"].as_array().expect("errors listed");
            if !pointer.is_empty() {
                assert!(errors.iter().any(|e| e["pointer"] == pointer), "{pointer}: {problem}");
            }
        }
    }
    assert!(app.all_names().await.is_empty(), "a refused body was written");

    // The same rules guard PUT.
    app.create(&json!({ "name": "kept", "data": [{ "a": 1 }] })).await;
    for body in [
        "{oops",
        &json!({ "data": [{ "$x": 1 }] }).to_string(),
        &json!({ "data": "no" }).to_string(),
    ] {
        let response = app
            .request(Method::PUT, "/configs/kept")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("sent");
        assert!(response.status().is_client_error());
    }
    let plain = app
        .request(Method::PUT, "/configs/kept")
        .body("{}")
        .send()
        .await
        .expect("sent");
    assert_problem(plain, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert_eq!(
        app.get("/configs/kept").await.1,
        json!({ "name": "kept", "data": [{ "a": 1 }] })
    );
}

async fn a_body_over_the_limit_is_413_and_nothing_is_written(app: TestApp) {
    let big = "x".repeat(1024 * 1024 + 1);
    let body = json!({ "name": "big", "data": [{ "blob": big }] }).to_string();
    let response = app
        .request(Method::POST, "/configs")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(app.get("/configs/big").await.0, StatusCode::NOT_FOUND);
    // Just under the limit is fine.
    let fits = json!({ "name": "fits", "data": [{ "blob": "x".repeat(1000 * 1000) }] });
    app.create(&fits).await;
}

async fn unknown_paths_are_404_and_wrong_methods_405_with_allow(app: TestApp) {
    let response = app.http.get(app.url("/nowhere")).send().await.expect("sent");
    assert_problem(response, StatusCode::NOT_FOUND).await;
    let response = app.http.delete(app.url("/configs")).send().await.expect("sent");
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "Allow: {allow:?}");
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    let response = app.http.post(app.url("/healthz")).send().await.expect("sent");
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
}

async fn probes_answer(app: TestApp) {
    assert_eq!(app.get("/healthz").await, (StatusCode::OK, json!({ "status": "ok" })));
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["store"]["status"], "up");
    let cache = if app.backend == Backend::Embedded {
        "disabled"
    } else {
        "up"
    };
    assert_eq!(ready["checks"]["cache"]["status"], cache);
    let (status, version) = app.get("/version").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version["name"], "app");
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert!(version["commit"].as_str().is_some_and(|c| !c.is_empty()));
}

async fn metrics_are_on_the_admin_listener_only(app: TestApp) {
    app.create(&sample("metered")).await;
    app.get("/configs/metered").await;
    app.get("/configs/metered").await;
    app.get("/configs/absent").await;
    let text = app.metrics().await;
    assert!(
        text.contains(r#"app_http_requests_total{method="POST",route="/configs",status="201"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"app_http_requests_total{method="GET",route="/configs/{name}",status="200"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"app_http_requests_total{method="GET",route="/configs/{name}",status="404"} 1"#),
        "{text}"
    );
    assert!(text.contains("app_http_request_duration_seconds_count"), "{text}");
    if app.backend == Backend::MongoRedis {
        assert!(
            text.contains(r#"app_cache_operations_total{outcome="hit"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"app_cache_operations_total{outcome="miss"} 2"#),
            "{text}"
        );
    }
    assert_eq!(app.get("/metrics").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invented_methods_are_counted_as_other_never_by_name() {
    let app = spawn(Backend::Embedded).await;
    for (method, path) in [
        ("FOOBAR", "/configs"),
        ("BREW", "/configs/x"),
        ("PROPFIND", "/nowhere"),
        ("get", "/healthz"),
    ] {
        let method = Method::from_bytes(method.as_bytes()).expect("a method token");
        let response = app.http.request(method, app.url(path)).send().await.expect("sent");
        assert!(response.status().is_client_error(), "{path}: {}", response.status());
    }
    app.get("/healthz").await;
    let text = app.metrics().await;
    for invented in ["FOOBAR", "BREW", "PROPFIND", "method=\"get\""] {
        assert!(!text.contains(invented), "{invented} became a label:\n{text}");
    }
    assert!(
        text.contains(r#"app_http_requests_total{method="OTHER",route="/configs",status="405"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"method="OTHER",route="unmatched""#), "{text}");
    assert!(text.contains(r#"method="GET",route="/healthz""#), "{text}");
}

async fn request_ids_are_echoed_or_created(app: TestApp) {
    let response = app
        .http
        .get(app.url("/configs/none"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let body = assert_problem(response, StatusCode::NOT_FOUND).await;
    assert_eq!(body["request_id"], "abc-123");
    let response = app.http.get(app.url("/healthz")).send().await.expect("sent");
    let id = response.headers()["x-request-id"].to_str().expect("ascii").to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let response = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "x".repeat(500))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        response.headers()["x-request-id"].len(),
        36,
        "an oversized id is replaced"
    );
}

#[tokio::test]
async fn writes_need_the_bearer_token_when_one_is_configured() {
    let app = spawn_with(
        Backend::Embedded,
        common::Options {
            token: Some("s3cret-token".into()),
            ..Default::default()
        },
    )
    .await;
    let body = sample("guarded").to_string();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic czNjcmV0LXRva2Vu"),
        Some("Bearer s3cret-token-longer"),
        Some("Bearer"),
    ] {
        let mut req = app
            .http
            .post(app.url("/configs"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let response = req.send().await.expect("sent");
        assert_eq!(
            response.headers().get("www-authenticate").map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        assert_problem(response, StatusCode::UNAUTHORIZED).await;
    }
    // Authentication comes before body parsing: garbage without a token is 401.
    let response = app
        .http
        .post(app.url("/configs"))
        .header("content-type", "text/plain")
        .body("garbage")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    for method in [Method::PUT, Method::PATCH, Method::DELETE] {
        let response = app
            .http
            .request(method, app.url("/configs/guarded"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert!(app.all_names().await.is_empty(), "an unauthenticated write landed");
    // The right token works; reads need none.
    app.create(&sample("guarded")).await;
    assert_eq!(app.get("/configs/guarded").await.0, StatusCode::OK);
    let lower = app
        .http
        .delete(app.url("/configs/guarded"))
        .header("authorization", "bearer s3cret-token")
        .send()
        .await
        .expect("sent");
    assert_eq!(lower.status(), StatusCode::NO_CONTENT, "the scheme is case-insensitive");
}
