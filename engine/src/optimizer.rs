//! A logical optimizer rule for the Hive-style query shape
//! `SELECT dt, count(*) ... FROM t WHERE dt = '2026-11-03' GROUP BY dt`:
//! every grouping column is fixed by an equality in the scan's filters, so
//! there is at most one group. Grouping a million rows by a dictionary
//! partition column costs DataFusion a hash per row; a global aggregate
//! costs nothing per row. The rewrite:
//!
//! ```text
//! Aggregate: groupBy=[dt], aggr=[A...]          Projection: '2026-11-03' AS t.dt, A...
//!   TableScan: t, filters=[dt = '2026-11-03']  =>  Filter: __sluice_rows > 0
//!                                                     Aggregate: groupBy=[], aggr=[A..., count(1) AS __sluice_rows]
//!                                                       TableScan: t, filters=[dt = '2026-11-03']
//! ```
//!
//! The filter keeps the grouped query's answer when nothing matches (no row,
//! where a global aggregate alone would give one). Only scans of listing
//! tables (Parquet / CSV / JSON files) are rewritten, never continuous
//! queries over streams.

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, LogicalPlanBuilder, Operator, col, lit};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The hidden row count the rewrite filters on.
const ROWS: &str = "__sluice_rows";

#[derive(Debug, Default)]
pub struct GroupByFixedColumns;

impl OptimizerRule for GroupByFixedColumns {
    fn name(&self) -> &str {
        "sluice_group_by_fixed_columns"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if agg.group_expr.is_empty() {
            return Ok(Transformed::no(plan));
        }
        let mut fixed: Vec<(Column, ScalarValue)> = Vec::new();
        if !fixed_by_filters(&agg.input, &mut fixed) {
            return Ok(Transformed::no(plan));
        }
        let mut constants = Vec::with_capacity(agg.group_expr.len());
        for g in &agg.group_expr {
            let Expr::Column(c) = g else {
                return Ok(Transformed::no(plan));
            };
            match fixed.iter().find(|(f, _)| f == c) {
                Some((_, v)) => constants.push(v.clone()),
                None => return Ok(Transformed::no(plan)),
            }
        }
        let mut aggr = agg.aggr_expr.clone();
        aggr.push(datafusion::functions_aggregate::expr_fn::count(lit(1i64)).alias(ROWS));
        let mut projection = Vec::with_capacity(agg.schema.fields().len());
        for (i, (qualifier, field)) in agg.schema.iter().enumerate() {
            projection.push(match constants.get(i) {
                Some(v) => lit(v.clone()).alias_qualified(qualifier.cloned(), field.name()),
                None => Expr::Column(Column::new(qualifier.cloned(), field.name())),
            });
        }
        let rewritten = LogicalPlanBuilder::from(agg.input.as_ref().clone())
            .aggregate(Vec::<Expr>::new(), aggr)?
            .filter(col(Column::new_unqualified(ROWS)).gt(lit(0i64)))?
            .project(projection)?
            .build()?;
        Ok(Transformed::yes(rewritten))
    }
}

/// Collects `column = literal` conjuncts of the filters between here and a
/// listing table's scan (in Filter nodes and the scan's own filters);
/// false when the input is anything else.
fn fixed_by_filters(plan: &LogicalPlan, out: &mut Vec<(Column, ScalarValue)>) -> bool {
    match plan {
        LogicalPlan::Filter(f) => {
            equalities(&f.predicate, out);
            fixed_by_filters(&f.input, out)
        }
        LogicalPlan::TableScan(scan) => {
            for f in &scan.filters {
                equalities(f, out);
            }
            source_as_provider(&scan.source)
                .map(|p| p.is::<ListingTable>())
                .unwrap_or(false)
        }
        _ => false,
    }
}

fn equalities(predicate: &Expr, out: &mut Vec<(Column, ScalarValue)>) {
    match predicate {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            equalities(left, out);
            equalities(right, out);
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c))
                if !v.is_null() =>
            {
                out.push((c.clone(), v.clone()));
            }
            _ => {}
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a Hive-partitioned listing table the grouped query is planned
    /// as a global aggregate and gives the grouped query's answers.
    #[test]
    fn group_by_a_fixed_partition_column_becomes_a_global_aggregate() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let ctx = datafusion::prelude::SessionContext::new();
            ctx.add_optimizer_rule(std::sync::Arc::new(GroupByFixedColumns));
            let path = dir.path().join("t");
            ctx.sql(&format!(
                "COPY (SELECT * FROM (VALUES (1, 'a'), (2, 'a'), (3, 'b')) AS v(x, dt)) TO '{}/' \
                 STORED AS PARQUET PARTITIONED BY (dt)",
                path.display()
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
            ctx.sql(&format!(
                "CREATE EXTERNAL TABLE t STORED AS PARQUET PARTITIONED BY (dt) LOCATION '{}/'",
                path.display()
            ))
            .await
            .unwrap();
            let query = |sql: &'static str| {
                let ctx = ctx.clone();
                async move {
                    let df = ctx.sql(sql).await.unwrap();
                    let plan = df
                        .clone()
                        .into_optimized_plan()
                        .unwrap()
                        .display_indent()
                        .to_string();
                    let batches = df.collect().await.unwrap();
                    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
                    let rows = arrow::util::pretty::pretty_format_batches(&batches)
                        .unwrap()
                        .to_string();
                    (plan, format!("{n} rows\n{rows}"))
                }
            };
            let (plan, rows) =
                query("SELECT dt, count(*) AS n, sum(x) AS s FROM t WHERE dt = 'a' GROUP BY dt").await;
            assert!(plan.contains("groupBy=[[]]"), "{plan}");
            assert!(
                rows.starts_with("1 rows") && rows.contains("| a  | 2 | 3 |"),
                "{rows}"
            );
            let (_, rows) = query("SELECT dt, count(*) AS n FROM t WHERE dt = 'zz' GROUP BY dt").await;
            assert!(
                rows.starts_with("0 rows"),
                "no row, as the grouped query gives: {rows}"
            );
            // Not fixed (a range): grouped as written.
            let (plan, _) = query("SELECT dt, count(*) AS n FROM t WHERE dt >= 'a' GROUP BY dt").await;
            assert!(plan.contains("groupBy=[[t.dt]]"), "{plan}");
        });
    }

    #[test]
    fn equalities_are_read_from_conjunctions_only() {
        let p = col("dt")
            .eq(lit("2026-11-03"))
            .and(lit(7i64).eq(col("h")))
            .and(col("x").gt(lit(1i64)));
        let mut out = vec![];
        equalities(&p, &mut out);
        let names: Vec<String> = out.iter().map(|(c, _)| c.name.clone()).collect();
        assert_eq!(names, ["dt", "h"]);
        let mut out = vec![];
        equalities(&col("dt").eq(lit("a")).or(col("dt").eq(lit("b"))), &mut out);
        assert!(out.is_empty(), "a disjunction fixes nothing");
    }
}
