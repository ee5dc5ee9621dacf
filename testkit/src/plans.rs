//! What PostgreSQL plans for a statement in each situation it may meet in service: without
//! statistics (autovacuum off, or a table that grew since its last `ANALYZE`) and with them,
//! each as a generic and as a custom plan. Tests that a statement reaches its rows by key use it.

use sqlx::PgConnection;

/// The plans of `executions` (`EXPLAIN EXECUTE` arguments, e.g. `lock_guards(ARRAY['a'])`, of
/// statements the test prepared on `connection`), first without statistics, then after
/// `ANALYZE` of `tables` (comma-separated), each with `plan_cache_mode` forcing a generic and a
/// custom plan: for each of the four, a label naming it and each execution's plan as text, in
/// the order of `executions`.
pub async fn in_every_situation(
    connection: &mut PgConnection,
    tables: &str,
    executions: &[&str],
) -> Vec<(String, Vec<String>)> {
    let mut situations = Vec::new();
    for analyzed in [false, true] {
        if analyzed {
            sqlx::raw_sql(&format!("ANALYZE {tables}"))
                .execute(&mut *connection)
                .await
                .expect("ANALYZE");
        }
        for mode in ["force_generic_plan", "force_custom_plan"] {
            sqlx::raw_sql(&format!("SET plan_cache_mode = {mode}"))
                .execute(&mut *connection)
                .await
                .expect("SET plan_cache_mode");
            let mut plans = Vec::with_capacity(executions.len());
            for execution in executions {
                let lines: Vec<String> =
                    sqlx::query_scalar(&format!("EXPLAIN EXECUTE {execution}"))
                        .fetch_all(&mut *connection)
                        .await
                        .expect("EXPLAIN EXECUTE");
                plans.push(lines.join("\n"));
            }
            situations.push((format!("analyzed: {analyzed}, {mode}"), plans));
        }
    }
    situations
}
