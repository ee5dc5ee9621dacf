//! What deploy/ gives an operator to watch linkd with (issue 16): Prometheus alert rules that
//! promtool accepts and whose unit tests pass, and a Grafana dashboard, both built only on
//! the series docs/metrics.md documents (which tests/e2e/metrics.rs checks the services serve).

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::metrics::{documented_series, mentioned_series};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Runs promtool (Debian's `prometheus` package; scripts/test.sh installs it) in
/// deploy/prometheus.
fn promtool(args: &[&str]) -> String {
    let output = Command::new(
        std::env::var("LINKD_PROMTOOL").unwrap_or_else(|_| "promtool".into()),
    )
    .args(args)
    .current_dir(deploy("prometheus"))
    .output()
    .unwrap_or_else(|e| {
        panic!(
            "running promtool ({e}); install Debian's prometheus package, or run scripts/test.sh"
        )
    });
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{printed}");
    printed
}

#[test]
fn the_alert_rules_are_valid_and_each_fires_when_it_should() {
    let checked = promtool(&["check", "rules", "linkd-alerts.yml"]);
    assert!(checked.contains("SUCCESS: 15 rules found"), "{checked}");
    // Every alert of the rules is exercised by the unit tests.
    let rules = std::fs::read_to_string(deploy("prometheus/linkd-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/linkd-alerts.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no unit test that makes it fire"
        );
    }
    promtool(&["test", "rules", "linkd-alerts.test.yml"]);
}

#[test]
fn the_alerts_and_the_dashboard_use_only_documented_series() {
    let documented = documented_series();
    assert!(documented.len() > 20, "{documented:?}");
    for file in ["prometheus/linkd-alerts.yml", "grafana/linkd.json"] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let used = mentioned_series(&text);
        assert!(!used.is_empty(), "{file}");
        for name in used {
            assert!(
                documented.contains(&name),
                "{file} uses {name}, which docs/metrics.md does not document"
            );
        }
    }
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_whose_every_panel_queries() {
    let text = std::fs::read_to_string(deploy("grafana/linkd.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dashboard["uid"], "linkd-overview");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "ids are unique"
        );
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("a query");
            assert!(expr.contains("linkd_"), "{expr}");
        }
    }
}
