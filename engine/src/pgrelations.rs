//! What a client's FROM clause means in Postgres, where DataFusion reads it
//! otherwise. Applied to client SQL by the server's compatibility rewrite.
//!
//! - `information_schema.columns`, `.table_constraints` and
//!   `.key_column_usage` are, as in Postgres, views over `pg_catalog`:
//!   Postgres type names (`bigint`, `timestamp with time zone`, `ARRAY`),
//!   `udt_name`, 1-based `ordinal_position`, precision and scale columns.
//!   DataFusion's own `information_schema.columns` reports Arrow type names
//!   (`Int64`, `Utf8View`) from position 0 (Grafana's column picker,
//!   information_schema-based BI tools). Its `tables`, `views`, `schemata`
//!   and `df_settings` stay as they are.
//! - A function in FROM: a one-column set-returning function aliased
//!   `AS i` names its column `i` (`generate_series(1, 3) AS i`, then
//!   `s[i]`); an array-valued scalar function in FROM is one row
//!   (`string_to_array(current_setting('search_path'), ',') s`, from
//!   Grafana's search-path constraint).
//! - `x [NOT] IN (subquery)` in a select list or ORDER BY, which DataFusion
//!   plans only in filters ("Physical plan does not support ...
//!   InSubquery"), becomes `[NOT] coalesce(array_has(ARRAY(subquery), x), false)`
//!   (Grafana's table picker orders by one). Where the subquery yields a
//!   NULL and `x` is not found, or `x` is NULL, Postgres answers NULL and
//!   this answers false (true under NOT).

use std::ops::ControlFlow;
use std::sync::LazyLock;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Ident, ObjectName, Query, Statement, TableAlias, TableAliasColumnDef,
    TableFactor, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// `information_schema.columns` as Postgres defines it, over pg_catalog.
/// Materialized views are listed too (Postgres leaves them out): in Sluice
/// they are what dashboards read.
const COLUMNS: &str = "SELECT
  CAST(current_database() AS VARCHAR) AS table_catalog,
  n.nspname AS table_schema,
  c.relname AS table_name,
  a.attname AS column_name,
  CAST(a.attnum AS INT) AS ordinal_position,
  CAST(NULL AS VARCHAR) AS column_default,
  CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END AS is_nullable,
  CASE WHEN t.typcategory = 'A' THEN 'ARRAY' ELSE format_type(a.atttypid, NULL) END AS data_type,
  CAST(CASE WHEN t.typname IN ('varchar', 'bpchar') AND a.atttypmod > 4 THEN a.atttypmod - 4 END AS INT)
    AS character_maximum_length,
  CAST(CASE WHEN t.typname IN ('varchar', 'bpchar', 'text')
    THEN CASE WHEN a.atttypmod > 4 THEN (a.atttypmod - 4) * 4 ELSE 1073741824 END END AS INT)
    AS character_octet_length,
  CAST(CASE t.typname WHEN 'int2' THEN 16 WHEN 'int4' THEN 32 WHEN 'int8' THEN 64
    WHEN 'float4' THEN 24 WHEN 'float8' THEN 53
    WHEN 'numeric' THEN CASE WHEN a.atttypmod >= 4 THEN ((a.atttypmod - 4) / 65536) % 65536 END END AS INT)
    AS numeric_precision,
  CAST(CASE WHEN t.typname IN ('int2', 'int4', 'int8', 'float4', 'float8') THEN 2
    WHEN t.typname = 'numeric' THEN 10 END AS INT) AS numeric_precision_radix,
  CAST(CASE WHEN t.typname IN ('int2', 'int4', 'int8') THEN 0
    WHEN t.typname = 'numeric' AND a.atttypmod >= 4 THEN (a.atttypmod - 4) % 65536 END AS INT) AS numeric_scale,
  CAST(CASE WHEN t.typname = 'date' THEN 0
    WHEN t.typname IN ('time', 'timetz', 'timestamp', 'timestamptz', 'interval')
    THEN CASE WHEN a.atttypmod >= 0 THEN a.atttypmod ELSE 6 END END AS INT) AS datetime_precision,
  CAST(NULL AS VARCHAR) AS interval_type,
  CAST(NULL AS INT) AS interval_precision,
  CAST(NULL AS VARCHAR) AS character_set_catalog,
  CAST(NULL AS VARCHAR) AS character_set_schema,
  CAST(NULL AS VARCHAR) AS character_set_name,
  CAST(NULL AS VARCHAR) AS collation_catalog,
  CAST(NULL AS VARCHAR) AS collation_schema,
  CAST(NULL AS VARCHAR) AS collation_name,
  CAST(NULL AS VARCHAR) AS domain_catalog,
  CAST(NULL AS VARCHAR) AS domain_schema,
  CAST(NULL AS VARCHAR) AS domain_name,
  CAST(current_database() AS VARCHAR) AS udt_catalog,
  tn.nspname AS udt_schema,
  t.typname AS udt_name,
  CAST(NULL AS VARCHAR) AS scope_catalog,
  CAST(NULL AS VARCHAR) AS scope_schema,
  CAST(NULL AS VARCHAR) AS scope_name,
  CAST(NULL AS INT) AS maximum_cardinality,
  CAST(a.attnum AS VARCHAR) AS dtd_identifier,
  'NO' AS is_self_referencing,
  'NO' AS is_identity,
  CAST(NULL AS VARCHAR) AS identity_generation,
  CAST(NULL AS VARCHAR) AS identity_start,
  CAST(NULL AS VARCHAR) AS identity_increment,
  CAST(NULL AS VARCHAR) AS identity_maximum,
  CAST(NULL AS VARCHAR) AS identity_minimum,
  'NO' AS identity_cycle,
  'NEVER' AS is_generated,
  CAST(NULL AS VARCHAR) AS generation_expression,
  CASE WHEN c.relkind IN ('r', 'p') THEN 'YES' ELSE 'NO' END AS is_updatable
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'f', 'p', 'm')";

const TABLE_CONSTRAINTS: &str = "SELECT
  CAST(current_database() AS VARCHAR) AS constraint_catalog,
  n.nspname AS constraint_schema,
  con.conname AS constraint_name,
  CAST(current_database() AS VARCHAR) AS table_catalog,
  n.nspname AS table_schema,
  c.relname AS table_name,
  CASE con.contype WHEN 'p' THEN 'PRIMARY KEY' WHEN 'u' THEN 'UNIQUE' WHEN 'f' THEN 'FOREIGN KEY'
    WHEN 'c' THEN 'CHECK' END AS constraint_type,
  CASE WHEN con.condeferrable THEN 'YES' ELSE 'NO' END AS is_deferrable,
  CASE WHEN con.condeferred THEN 'YES' ELSE 'NO' END AS initially_deferred,
  'YES' AS enforced,
  CAST(NULL AS VARCHAR) AS nulls_distinct
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE con.contype IN ('p', 'u', 'f', 'c')";

const KEY_COLUMN_USAGE: &str = "SELECT
  CAST(current_database() AS VARCHAR) AS constraint_catalog,
  n.nspname AS constraint_schema,
  con.conname AS constraint_name,
  CAST(current_database() AS VARCHAR) AS table_catalog,
  n.nspname AS table_schema,
  c.relname AS table_name,
  a.attname AS column_name,
  CAST(array_position(con.conkey, a.attnum) AS INT) AS ordinal_position,
  CAST(NULL AS INT) AS position_in_unique_constraint
FROM pg_catalog.pg_constraint con
JOIN pg_catalog.pg_class c ON c.oid = con.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND array_has(con.conkey, a.attnum)
WHERE con.contype IN ('p', 'u', 'f')";

/// The views, parsed once.
static VIEWS: LazyLock<Vec<(&'static str, Query)>> = LazyLock::new(|| {
    [
        ("columns", COLUMNS),
        ("table_constraints", TABLE_CONSTRAINTS),
        ("key_column_usage", KEY_COLUMN_USAGE),
    ]
    .into_iter()
    .map(|(name, sql)| (name, parse_query(sql).expect("an information_schema view parses")))
    .collect()
});

/// Set-returning functions with one output column, which Postgres names
/// after a table alias given without column names.
const ONE_COLUMN_SET_FUNCTIONS: &[&str] = &["generate_series", "generate_subscripts"];

/// A one-column function's alias names its column too, as in Postgres.
fn name_the_column(a: &mut TableAlias) {
    if a.columns.is_empty() {
        a.columns.push(TableAliasColumnDef {
            name: a.name.clone(),
            data_type: None,
        });
    }
}

/// Array-valued scalar functions clients put in FROM, where Postgres makes
/// them one row.
const SCALAR_FUNCTIONS_IN_FROM: &[&str] = &[
    "string_to_array",
    "regexp_split_to_array",
    "parse_ident",
    "current_schemas",
];

fn parse_query(sql: &str) -> Option<Query> {
    let statement = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()?
        .parse_statement()
        .ok()?;
    match statement {
        Statement::Query(q) => Some(*q),
        _ => None,
    }
}

/// Rewrites `statement` as described in the module's docs.
pub fn postgres_relations(statement: &mut Statement) {
    let _ = statement.visit(&mut FromRewriter);
    let _ = statement.visit(&mut SelectListInSubqueries);
}

struct SelectListInSubqueries;

impl VisitorMut for SelectListInSubqueries {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        use datafusion::sql::sqlparser::ast::{OrderByKind, SelectItem, SetExpr};
        if let SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                    in_subqueries_as_any(e);
                }
            }
        }
        if let Some(order_by) = query.order_by.as_mut()
            && let OrderByKind::Expressions(items) = &mut order_by.kind
        {
            for item in items {
                in_subqueries_as_any(&mut item.expr);
            }
        }
        ControlFlow::Continue(())
    }
}

/// `x [NOT] IN (subquery)` anywhere in `e` becomes
/// `[NOT] coalesce(array_has(ARRAY(subquery), x), false)`.
fn in_subqueries_as_any(e: &mut Expr) {
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(e, |e| {
        if let Expr::InSubquery {
            expr,
            subquery,
            negated,
        } = e
        {
            let not = if *negated { "NOT " } else { "" };
            if let Ok(any) = Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&format!(
                    "{not}coalesce(array_has(ARRAY({subquery}), {expr}), false)"
                ))
                .and_then(|mut p| p.parse_expr())
            {
                *e = any;
            }
        }
        ControlFlow::<()>::Continue(())
    });
}

struct FromRewriter;

impl VisitorMut for FromRewriter {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        // `unnest(a) x`: one column, named `x` (psql's `\d+`).
        if let TableFactor::UNNEST {
            alias: Some(a),
            array_exprs,
            with_offset: false,
            ..
        } = factor
            && array_exprs.len() == 1
        {
            name_the_column(a);
            return ControlFlow::Continue(());
        }
        let TableFactor::Table {
            name, alias, args, ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let replacement = match args {
            None => information_schema_view(name).map(|q| (q, last_part(name))),
            Some(args) => {
                let function = single_name(name);
                if function.as_deref() == Some("unnest")
                    && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(array))] = args.args.as_slice()
                {
                    // `[pg_catalog.]unnest(a)` as a function call is
                    // DataFusion's UNNEST (it has no table function of
                    // that name), its column named by the alias.
                    let mut alias = alias.take();
                    if let Some(a) = alias.as_mut() {
                        name_the_column(a);
                    }
                    *factor = TableFactor::UNNEST {
                        alias,
                        array_exprs: vec![array.clone()],
                        with_offset: false,
                        with_offset_alias: None,
                        with_ordinality: false,
                    };
                    return ControlFlow::Continue(());
                }
                if function
                    .as_deref()
                    .is_some_and(|f| ONE_COLUMN_SET_FUNCTIONS.contains(&f))
                {
                    if let Some(a) = alias {
                        name_the_column(a);
                    }
                    None
                } else if let Some(function) =
                    function.filter(|f| SCALAR_FUNCTIONS_IN_FROM.contains(&f.as_str()))
                {
                    let column = alias
                        .as_ref()
                        .map_or_else(|| Ident::new(&function), |a| a.name.clone());
                    let args = args
                        .args
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    parse_query(&format!("SELECT {function}({args}) AS {column}"))
                        .map(|q| (q, Ident::new(function)))
                } else {
                    None
                }
            }
        };
        if let Some((query, default_alias)) = replacement {
            let alias = alias.take().unwrap_or(TableAlias {
                explicit: true,
                name: default_alias,
                columns: vec![],
                at: None,
            });
            *factor = TableFactor::Derived {
                lateral: false,
                subquery: Box::new(query),
                alias: Some(alias),
                sample: None,
            };
        }
        ControlFlow::Continue(())
    }
}

/// The view for `information_schema.<name>` (or `<catalog>.information_schema.<name>`).
fn information_schema_view(name: &ObjectName) -> Option<Query> {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .collect();
    if parts.len() != name.0.len()
        || !(2..=3).contains(&parts.len())
        || parts[parts.len() - 2] != "information_schema"
    {
        return None;
    }
    let table = parts.last()?;
    VIEWS.iter().find(|(n, _)| n == table).map(|(_, q)| q.clone())
}

fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [part] => part.as_ident().map(|i| i.value.to_ascii_lowercase()),
        // `pg_catalog.unnest(...)`, as psql writes it.
        [schema, part]
            if schema
                .as_ident()
                .is_some_and(|s| s.value.eq_ignore_ascii_case("pg_catalog")) =>
        {
            part.as_ident().map(|i| i.value.to_ascii_lowercase())
        }
        _ => None,
    }
}

fn last_part(name: &ObjectName) -> Ident {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .cloned()
        .unwrap_or_else(|| Ident::new("relation"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast::SetExpr;

    fn is_select(query: &Query) -> bool {
        matches!(query.body.as_ref(), SetExpr::Select(_))
    }

    fn rewritten(sql: &str) -> String {
        let mut s = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_statement()
            .unwrap();
        postgres_relations(&mut s);
        s.to_string()
    }

    #[test]
    fn every_view_parses_as_a_select() {
        assert_eq!(VIEWS.len(), 3);
        assert!(VIEWS.iter().all(|(_, q)| is_select(q)));
    }

    #[test]
    fn information_schema_columns_becomes_the_view_under_its_name() {
        let out = rewritten("SELECT column_name FROM information_schema.columns WHERE table_name = 't'");
        assert!(out.contains("FROM (SELECT"), "{out}");
        assert!(out.contains("pg_catalog.pg_attribute"), "{out}");
        assert!(out.ends_with(") AS columns WHERE table_name = 't'"), "{out}");
        let aliased = rewritten("SELECT c.data_type FROM sluice.INFORMATION_SCHEMA.COLUMNS c");
        assert!(aliased.ends_with(") c"), "{aliased}");
        // Tables of other schemas, and information_schema's other tables, stay.
        assert_eq!(rewritten("SELECT * FROM columns"), "SELECT * FROM columns");
        assert_eq!(
            rewritten("SELECT * FROM information_schema.tables"),
            "SELECT * FROM information_schema.tables"
        );
    }

    #[test]
    fn in_subqueries_of_select_lists_and_order_by_become_any_of_an_array() {
        assert_eq!(
            rewritten(
                "SELECT CASE WHEN s IN (SELECT 'a') THEN 0 ELSE 1 END FROM t ORDER BY s NOT IN (SELECT 'b')"
            ),
            "SELECT CASE WHEN coalesce(array_has(ARRAY(SELECT 'a'), s), false) THEN 0 ELSE 1 END FROM t \
             ORDER BY NOT coalesce(array_has(ARRAY(SELECT 'b'), s), false)"
        );
        // In a filter DataFusion plans it as it is.
        assert_eq!(
            rewritten("SELECT s FROM t WHERE s IN (SELECT 'a')"),
            "SELECT s FROM t WHERE s IN (SELECT 'a')"
        );
    }

    #[test]
    fn functions_in_from_read_as_postgres_reads_them() {
        // psql's `\d+`.
        assert_eq!(
            rewritten("SELECT array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x) FROM t tc"),
            "SELECT array(SELECT 'toast.' || x FROM UNNEST(tc.reloptions) x (x)) FROM t tc"
        );
        assert_eq!(
            rewritten("SELECT x FROM unnest(ARRAY[1, 2]) x"),
            "SELECT x FROM UNNEST(ARRAY[1, 2]) x (x)"
        );
        assert_eq!(
            rewritten("SELECT i FROM generate_series(1, 3) AS i"),
            "SELECT i FROM generate_series(1, 3) AS i (i)"
        );
        assert_eq!(
            rewritten("SELECT x FROM generate_series(1, 3) AS t(x)"),
            "SELECT x FROM generate_series(1, 3) AS t (x)"
        );
        assert_eq!(
            rewritten("SELECT s[1] FROM string_to_array('a,b', ',') s"),
            "SELECT s[1] FROM (SELECT string_to_array('a,b', ',') AS s) s"
        );
        assert_eq!(
            rewritten("SELECT * FROM string_to_array('a,b', ',')"),
            "SELECT * FROM (SELECT string_to_array('a,b', ',') AS string_to_array) AS string_to_array"
        );
        // Table functions of Sluice's own are left to their planner.
        assert_eq!(
            rewritten("SELECT * FROM tumble(bid, date_time, INTERVAL '10' SECOND) w"),
            "SELECT * FROM tumble(bid, date_time, INTERVAL '10' SECOND) w"
        );
    }
}
