//! `hvsock bench --quick --json` runs every case and prints the documented
//! JSON document. Structure only: figures depend on the machine, so no
//! test here looks at a timing.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hvsock"))
        .arg("bench")
        .args(args)
        .output()
        .expect("hvsock runs");
    assert!(
        out.status.success(),
        "hvsock bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    // Exactly one JSON document on stdout, nothing else.
    let mut docs = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
    let doc = docs.next().expect("a document").expect("valid JSON");
    assert!(docs.next().is_none(), "more than one document: {text}");
    doc
}

#[track_caller]
fn string<'a>(r: &'a Value, key: &str) -> &'a str {
    r[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {r}"))
}

#[test]
fn quick_json_has_the_documented_shape() {
    let doc = bench(&["--quick", "--json"]);
    let machine = &doc["machine"];
    assert!(machine["cpu"].is_string(), "{machine}");
    assert!(
        machine["cores"].as_u64().is_some_and(|n| n >= 1),
        "{machine}"
    );
    assert!(machine["kernel"].is_string(), "{machine}");
    assert_eq!(machine["load_start"].as_array().map(Vec::len), Some(3));

    let results = doc["results"].as_array().expect("results is an array");
    let mut cases = std::collections::BTreeSet::new();
    for r in results {
        let case = string(r, "case");
        let transport = string(r, "transport");
        cases.insert(case.to_string());
        assert!(
            ["throughput", "rtt", "setup", "connections"].contains(&case),
            "{r}"
        );
        assert!(
            ["hvsock", "uds", "tcp", "c-ring", "futex"].contains(&transport),
            "{r}"
        );
        assert!(
            ["blocking", "busy-poll"].contains(&string(r, "mode")),
            "{r}"
        );
        assert!(!string(r, "direction").is_empty(), "{r}");
        assert!(
            r.get("write_size").is_some(),
            "write_size is always present: {r}"
        );
        assert!(r.get("value").is_some(), "{r}");
        let unit = string(r, "unit");
        match case {
            "throughput" | "connections" => assert_eq!(unit, "GB/s", "{r}"),
            "rtt" => {
                assert_eq!(unit, "us", "{r}");
                for p in ["p50", "p99", "p999"] {
                    assert!(r[p].is_number(), "{p} missing: {r}");
                }
            }
            _ => assert_eq!(unit, "conn/s", "{r}"),
        }
        if case == "throughput" || case == "rtt" {
            assert!(r["write_size"].is_u64(), "{r}");
        }
        // A flat object: no nested arrays or objects.
        for (k, v) in r.as_object().expect("an object") {
            assert!(!v.is_object() && !v.is_array(), "{k} is nested in {r}");
        }
    }
    for case in ["throughput", "rtt", "setup", "connections"] {
        assert!(cases.contains(case), "no {case} results");
        for transport in ["hvsock", "uds", "tcp"] {
            assert!(
                results
                    .iter()
                    .any(|r| r["case"] == case && r["transport"] == transport),
                "no {case} result for {transport}"
            );
        }
    }
    // The wake-up floor runs beside the 1-byte round trips, in both modes,
    // and really measures.
    for mode in ["blocking", "busy-poll"] {
        let floor = results
            .iter()
            .find(|r| r["transport"] == "futex" && r["mode"] == mode)
            .unwrap_or_else(|| panic!("no {mode} wake-up floor"));
        assert_eq!(floor["case"], "rtt", "{floor}");
        assert_eq!(floor["write_size"], 1, "{floor}");
        assert!(
            floor["value"].as_f64().is_some_and(|us| us > 0.0),
            "{floor}"
        );
        assert!(floor["ratio_uds"].is_number(), "{floor}");
    }
    // Every set-up row is taken apart into its phases, measured on both
    // sides of the daemon (the bench process connects for host to guest,
    // its peer for guest to host).
    for r in results.iter().filter(|r| r["case"] == "setup") {
        for phase in ["connect_us", "exchange_us", "close_us"] {
            assert!(
                r[phase].as_f64().is_some_and(|us| us > 0.0),
                "{phase} missing: {r}"
            );
        }
    }
    for dir in ["g2h", "h2g"] {
        assert!(
            results.iter().any(|r| r["case"] == "setup"
                && r["transport"] == "hvsock"
                && r["via"] == "daemon"
                && r["direction"] == dir),
            "no hvsock set-up row through the daemon for {dir}"
        );
    }
    // Every Unix-socket row is its own reference.
    for r in results.iter().filter(|r| r["transport"] == "uds") {
        if r["value"].is_number() {
            assert_eq!(r["ratio_uds"].as_f64(), Some(1.0), "{r}");
        }
    }
}

#[test]
fn only_runs_one_case_and_the_table_has_ratios() {
    let out = Command::new(env!("CARGO_BIN_EXE_hvsock"))
        .args(["bench", "--quick", "--only", "setup"])
        .output()
        .expect("hvsock runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(text.contains("| setup |"), "{text}");
    assert!(text.contains("x UDS"), "{text}");
    assert!(!text.contains("| throughput |"), "{text}");
    for transport in ["uds", "tcp", "hvsock"] {
        assert!(text.contains(&format!("| {transport} |")), "{text}");
    }
}

#[test]
fn mode_and_transport_filters_keep_only_those_rows() {
    let doc = bench(&[
        "--quick",
        "--json",
        "--only",
        "rtt",
        "--mode",
        "busy-poll",
        "--transport",
        "uds",
        "--transport",
        "hvsock",
    ]);
    let results = doc["results"].as_array().expect("results is an array");
    assert!(!results.is_empty());
    for r in results {
        assert_eq!(string(r, "case"), "rtt", "{r}");
        assert_eq!(string(r, "mode"), "busy-poll", "{r}");
        assert!(["uds", "hvsock"].contains(&string(r, "transport")), "{r}");
    }
    for transport in ["uds", "hvsock"] {
        assert!(
            results.iter().any(|r| r["transport"] == transport),
            "no {transport} row"
        );
    }
    // Filters that leave nothing to measure are an error, not an empty
    // table.
    let out = Command::new(env!("CARGO_BIN_EXE_hvsock"))
        .args(["bench", "--quick", "--only", "setup", "--mode", "busy-poll"])
        .output()
        .expect("hvsock runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to measure"), "{err}");
    // An unknown mode is refused with the choices.
    let out = Command::new(env!("CARGO_BIN_EXE_hvsock"))
        .args(["bench", "--mode", "spinning"])
        .output()
        .expect("hvsock runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busy-poll"), "{err}");
}
