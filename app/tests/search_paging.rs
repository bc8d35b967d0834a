//! `/search` is paged like `/configs`: `limit` (default 100, at most 1000),
//! `after` (the previous page's `next`), results ordered by config name then
//! element index, and `total` always the exact count of every match. On
//! both backends.

#[macro_use]
mod common;

use common::{Backend, TestApp, assert_problem, spawn};
use reqwest::StatusCode;
use serde_json::{Value, json};

on_both_backends!(
    search_pages_through_every_match_in_name_then_index_order,
    a_search_without_limit_returns_the_first_hundred_and_the_exact_total,
    bad_search_paging_parameters_are_400_naming_the_parameter,
);

/// `{"i": 0..n, "k": "v"}` elements, `"w"` where `hit` says no.
fn elements(n: usize, hit: impl Fn(usize) -> bool) -> Value {
    json!(
        (0..n)
            .map(|i| json!({ "i": i, "k": if hit(i) { "v" } else { "w" } }))
            .collect::<Vec<_>>()
    )
}

/// `NAME:i` of each result of a page.
fn positions(page: &Value) -> Vec<String> {
    page["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| format!("{}:{}", r["name"].as_str().expect("name"), r["data"]["i"]))
        .collect()
}

async fn search_pages_through_every_match_in_name_then_index_order(app: TestApp) {
    app.create(&json!({ "name": "gamma", "data": elements(3, |_| true) }))
        .await;
    app.create(&json!({ "name": "alpha", "data": elements(4, |i| i != 1) }))
        .await;
    app.create(&json!({ "name": "beta", "data": elements(2, |_| false) }))
        .await;
    let mut seen = Vec::new();
    let mut path = "/search?data.k=v&limit=2".to_string();
    let mut pages = 0;
    loop {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["total"], 6, "every page counts every match: {page}");
        assert!(page["results"].as_array().expect("results").len() <= 2, "{page}");
        seen.extend(positions(&page));
        pages += 1;
        match &page["next"] {
            Value::String(next) => path = format!("/search?data.k=v&limit=2&after={next}"),
            Value::Null => break,
            other => panic!("next is {other}"),
        }
    }
    assert_eq!(seen, ["alpha:0", "alpha:2", "alpha:3", "gamma:0", "gamma:1", "gamma:2"]);
    assert_eq!(pages, 3, "no empty last page");
    // The same matches in one page, and narrowed by name.
    let (_, all) = app.get("/search?data.k=v&limit=1000").await;
    assert_eq!((positions(&all), all["next"].clone()), (seen.clone(), Value::Null));
    let (_, alpha) = app.get("/search?name=alpha&data.k=v&limit=1").await;
    assert_eq!(
        (alpha["total"].clone(), positions(&alpha)),
        (json!(3), vec!["alpha:0".to_string()])
    );
}

async fn a_search_without_limit_returns_the_first_hundred_and_the_exact_total(app: TestApp) {
    app.create(&json!({ "name": "big", "data": elements(250, |i| i % 5 != 0) }))
        .await;
    app.create(&json!({ "name": "small", "data": elements(3, |_| true) }))
        .await;
    let (status, page) = app.get("/search?data.k=v").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 203, "200 in big, 3 in small");
    let first = positions(&page);
    assert_eq!(first.len(), 100);
    assert_eq!((first[0].as_str(), first[99].as_str()), ("big:1", "big:124"));
    let next = page["next"].as_str().expect("more pages").to_string();
    let (_, rest) = app.get(&format!("/search?data.k=v&limit=1000&after={next}")).await;
    let rest = positions(&rest);
    assert_eq!(rest.len(), 103);
    assert_eq!((rest[0].as_str(), rest[102].as_str()), ("big:126", "small:2"));
}

async fn bad_search_paging_parameters_are_400_naming_the_parameter(app: TestApp) {
    for (query, param) in [
        ("data.k=v&limit=0", "limit"),
        ("data.k=v&limit=1001", "limit"),
        ("data.k=v&limit=ten", "limit"),
        ("data.k=v&limit=1&limit=2", "limit"),
        ("data.k=v&after=big", "after"),
        ("data.k=v&after=no%20spaces.1", "after"),
        ("data.k=v&after=big.x", "after"),
        ("limit=5", "query"),
    ] {
        let response = app
            .http
            .get(app.url(&format!("/search?{query}")))
            .send()
            .await
            .expect("sent");
        let body = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["param"], param, "{query}: {body}");
    }
}
