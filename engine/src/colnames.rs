//! Result column names as Postgres gives them.
//!
//! DataFusion names an unaliased expression after its whole text
//! (`count(*)`, `Int64(1)`, `avg(t.fare)`); Postgres names it after its
//! outermost function, column or cast type (`count`, `avg`, `int4`) and
//! calls the rest `?column?`. Clients show these names (psql headers) and
//! key rows by them (pandas data frames, SQLAlchemy row mappings), so a
//! SELECT's output is renamed the Postgres way. Postgres allows two
//! output columns of one name (`SELECT 1, 2`), and so does this: the
//! names go on the result's schema, not into the plan.

use datafusion::sql::sqlparser::ast::{
    CastKind, DataType as SqlType, Expr, Function, FunctionArguments, Query, SelectItem, SetExpr, Statement,
    VisitMut, VisitorMut,
};

/// What Postgres calls an expression it can't name otherwise.
pub const UNNAMED: &str = "?column?";

/// One select-list item: a name, or a wildcard whose columns keep theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// `Some`: rename the column to this; `None`: keep the planner's name
    /// (aliases and plain columns, which DataFusion already names right).
    Column(Option<String>),
    Wildcard,
}

/// The select list of a query statement, or None for anything else.
pub fn select_items(statement: &Statement) -> Option<Vec<Item>> {
    match statement {
        Statement::Query(q) => query_items(q),
        _ => None,
    }
}

fn query_items(q: &Query) -> Option<Vec<Item>> {
    set_items(&q.body)
}

fn set_items(body: &SetExpr) -> Option<Vec<Item>> {
    match body {
        SetExpr::Select(s) => Some(
            s.projection
                .iter()
                .map(|item| match item {
                    SelectItem::UnnamedExpr(e) => Item::Column(match e {
                        // DataFusion names these as Postgres does.
                        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => None,
                        e => Some(expr_name(e).unwrap_or_else(|| UNNAMED.to_string())),
                    }),
                    SelectItem::ExprWithAlias { .. } | SelectItem::ExprWithAliases { .. } => {
                        Item::Column(None)
                    }
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => Item::Wildcard,
                })
                .collect(),
        ),
        // A UNION takes its names from its first branch.
        SetExpr::SetOperation { left, .. } => set_items(left),
        SetExpr::Query(q) => query_items(q),
        _ => None,
    }
}

/// Postgres' name for an expression (FigureColname), None for `?column?`.
fn expr_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.clone()),
        Expr::Nested(inner) | Expr::Collate { expr: inner, .. } => expr_name(inner),
        // `ARRAY(subquery)`, as the parser rewrites it (see
        // `parser::array_subquery`): `array`.
        Expr::Function(f) if is_array_subquery(f) => Some("array".into()),
        Expr::Function(f) => Some(function_name(f)),
        // `(expr).field`: the field's name.
        Expr::CompoundFieldAccess { access_chain, .. } => match access_chain.last()? {
            datafusion::sql::sqlparser::ast::AccessExpr::Dot(Expr::Identifier(i)) => Some(i.value.clone()),
            _ => None,
        },
        Expr::Cast {
            kind,
            expr,
            data_type,
            ..
        } => match kind {
            CastKind::Cast | CastKind::DoubleColon => expr_name(expr).or_else(|| type_name(data_type)),
            CastKind::TryCast | CastKind::SafeCast => Some("try_cast".into()),
        },
        Expr::TypedString(t) => type_name(&t.data_type),
        Expr::Interval(_) => Some("interval".into()),
        Expr::Case { .. } => Some("case".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Array(_) => Some("array".into()),
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Overlay { .. } => Some("overlay".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        Expr::AtTimeZone { .. } => Some("timezone".into()),
        Expr::Subquery(q) => match query_items(q)?.first()? {
            Item::Column(Some(n)) if n != UNNAMED => Some(n.clone()),
            _ => match &*q.body {
                SetExpr::Select(s) => match s.projection.first()? {
                    SelectItem::UnnamedExpr(e) => expr_name(e),
                    SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
                    _ => None,
                },
                _ => None,
            },
        },
        // Constants (`SELECT 1`, `SELECT 'x'`), operators and the rest: unnamed.
        _ => None,
    }
}

/// `coalesce((SELECT array_agg(..) ...), make_array())`: the parser's form
/// of `ARRAY(subquery)`.
fn is_array_subquery(f: &Function) -> bool {
    use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr};
    let FunctionArguments::List(list) = &f.args else {
        return false;
    };
    let arg = |i: usize| match list.args.get(i) {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) => Some(e),
        _ => None,
    };
    let empty_array = matches!(arg(1), Some(Expr::Function(m)) if function_name(m) == "make_array"
        && matches!(&m.args, FunctionArguments::List(l) if l.args.is_empty()));
    function_name(f) == "coalesce"
        && list.args.len() == 2
        && empty_array
        && matches!(arg(0), Some(Expr::Subquery(_)) | Some(Expr::Nested(_)))
}

/// A function call's name as Postgres shows it: its last name part,
/// folded to lower case unless quoted.
fn function_name(f: &Function) -> String {
    let last = f.name.0.last().and_then(|p| p.as_ident());
    match last {
        Some(i) if i.quote_style.is_some() => i.value.clone(),
        Some(i) => i.value.to_ascii_lowercase(),
        None => f.name.to_string().to_ascii_lowercase(),
    }
}

/// The name Postgres gives a cast to `t` of something unnamed: the type's
/// internal name (`::integer` is `int4`).
fn type_name(t: &SqlType) -> Option<String> {
    let name = match t {
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => "int4",
        SqlType::BigInt(_) | SqlType::Int8(_) => "int8",
        SqlType::SmallInt(_) | SqlType::Int2(_) => "int2",
        SqlType::Real | SqlType::Float4 => "float4",
        SqlType::Double(_) | SqlType::DoublePrecision | SqlType::Float8 => "float8",
        SqlType::Float(_) => "float8",
        SqlType::Numeric(_) | SqlType::Decimal(_) | SqlType::Dec(_) => "numeric",
        SqlType::Boolean | SqlType::Bool => "bool",
        SqlType::Text => "text",
        SqlType::Varchar(_) | SqlType::CharacterVarying(_) => "varchar",
        SqlType::Char(_) | SqlType::Character(_) => "bpchar",
        SqlType::Date => "date",
        SqlType::Timestamp(_, tz) => match tz {
            datafusion::sql::sqlparser::ast::TimezoneInfo::WithTimeZone
            | datafusion::sql::sqlparser::ast::TimezoneInfo::Tz => "timestamptz",
            _ => "timestamp",
        },
        SqlType::Time(..) => "time",
        SqlType::Interval { .. } => "interval",
        SqlType::Bytea => "bytea",
        SqlType::JSON => "json",
        SqlType::JSONB => "jsonb",
        SqlType::Uuid => "uuid",
        SqlType::Regclass => "regclass",
        SqlType::Array(_) => return None,
        SqlType::Custom(name, _) => {
            return name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| i.value.to_ascii_lowercase());
        }
        _ => return None,
    };
    Some(name.to_string())
}

/// `generate_series(...)` in a SELECT's list is set-returning in Postgres
/// (`SELECT generate_series(1, 3)` gives three rows); DataFusion's scalar
/// form gives one list. Such an item becomes `unnest(generate_series(...))`
/// (its name stays `generate_series`, from the select items taken before).
/// `generate_subscripts(a, d)` (SQLAlchemy's index reflection pairs it with
/// `unnest(a)`) becomes `unnest(generate_series(1, array_length(a, d)))`:
/// Sluice's arrays start at 1. In every SELECT of the statement; DataFusion
/// unnests several items of one list in step, as Postgres runs them.
///
/// Also Postgres' composite field access `(expr).field`, which DataFusion's
/// planner refuses, becomes `get_field(expr, 'field')`; and
/// `information_schema._pg_expandarray(a)` (pgjdbc's key and index
/// metadata), a set of `(x, n)` records, becomes
/// `unnest(pg_expandarray(a))`.
pub fn unnest_set_returning(statement: &mut Statement) {
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(statement, |e| {
        if let Expr::CompoundFieldAccess { root, access_chain } = e
            && matches!(root.as_ref(), Expr::Nested(_))
            && let [datafusion::sql::sqlparser::ast::AccessExpr::Dot(Expr::Identifier(field))] =
                access_chain.as_slice()
            && let Some(call) = parse_expr(&format!(
                "get_field({root}, '{}')",
                field.value.replace('\'', "''")
            ))
        {
            *e = call;
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    let _ = statement.visit(&mut SetReturning);
}

/// A second unaliased select item that names the same column or reads as
/// an earlier one (`SELECT NULL, NULL`, `SELECT a, t.a`: pgjdbc's
/// `getProcedures`), which DataFusion refuses as a duplicate name, gets a
/// hidden alias; the client still sees Postgres' names, from `items` (the
/// select items taken before this runs; a column's gets its name here).
pub fn alias_duplicates(statement: &mut Statement, items: &mut [Item]) {
    let Statement::Query(q) = statement else { return };
    let SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    if select.projection.len() != items.len() {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for (i, item) in select.projection.iter_mut().enumerate() {
        match item {
            SelectItem::UnnamedExpr(e) => {
                let column = match e {
                    Expr::Identifier(id) => Some(id.value.clone()),
                    Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()),
                    _ => None,
                };
                let key = match &column {
                    Some(c) => format!("column {c}"),
                    None => e.to_string(),
                };
                // DataFusion names every subquery `(<subquery>)`, so two
                // different ones collide too.
                if !seen.insert(key) || (holds_subquery(e) && !seen.insert("(<subquery>)".into())) {
                    if let Some(c) = column {
                        items[i] = Item::Column(Some(c));
                    }
                    let alias = datafusion::sql::sqlparser::ast::Ident::new(format!("__sluice_column_{i}"));
                    *item = SelectItem::ExprWithAlias {
                        expr: e.clone(),
                        alias,
                    };
                }
            }
            SelectItem::ExprWithAlias { alias, .. } => {
                seen.insert(alias.value.clone());
            }
            _ => {}
        }
    }
}

/// Whether `e` holds a scalar subquery (or `EXISTS`, `IN (subquery)`).
fn holds_subquery(e: &Expr) -> bool {
    use datafusion::sql::sqlparser::ast::Visit;
    struct Finds;
    impl datafusion::sql::sqlparser::ast::Visitor for Finds {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> std::ops::ControlFlow<()> {
            std::ops::ControlFlow::Break(())
        }
    }
    e.visit(&mut Finds).is_break()
}

fn parse_expr(text: &str) -> Option<Expr> {
    datafusion::sql::sqlparser::parser::Parser::new(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
    )
    .try_with_sql(text)
    .and_then(|mut p| p.parse_expr())
    .ok()
}

struct SetReturning;

impl VisitorMut for SetReturning {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut Query) -> std::ops::ControlFlow<()> {
        let SetExpr::Select(select) = q.body.as_mut() else {
            return std::ops::ControlFlow::Continue(());
        };
        for item in select.projection.iter_mut() {
            let e = match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                _ => continue,
            };
            // `(_pg_expandarray(a)).n` is `get_field(_pg_expandarray(a), 'n')`
            // by now.
            let set_returning = |f: &Function| {
                matches!(
                    function_name(f).as_str(),
                    "generate_series" | "generate_subscripts" | "_pg_expandarray"
                )
            };
            let f = match e {
                Expr::Function(f) if set_returning(f) => f,
                _ => {
                    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(e, |x| {
                        if let Expr::Function(f) = x
                            && function_name(f) == "_pg_expandarray"
                            && let Some(call) = parse_expr(&format!("unnest(pg_expandarray({}))", f.args))
                        {
                            *x = call;
                        }
                        std::ops::ControlFlow::<()>::Continue(())
                    });
                    continue;
                }
            };
            let text = match function_name(f).as_str() {
                "_pg_expandarray" => format!("unnest(pg_expandarray({}))", f.args),
                "generate_series" => format!("unnest({e})"),
                "generate_subscripts" => {
                    let FunctionArguments::List(list) = &f.args else {
                        continue;
                    };
                    let [array, dim] = list.args.as_slice() else {
                        continue;
                    };
                    format!("unnest(generate_series(1, array_length({array}, {dim})))")
                }
                _ => continue,
            };
            if let Ok(call) = datafusion::sql::sqlparser::parser::Parser::new(
                &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
            )
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr())
            {
                *e = call;
            }
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// The output names for a result of `fields` columns whose select list
/// was `items`: items before the first wildcard line up from the start,
/// items after the last one from the end; None when nothing changes (or
/// the list can't be lined up).
pub fn rename(items: &[Item], fields: &[String]) -> Option<Vec<String>> {
    let mut names = fields.to_vec();
    let first_wild = items.iter().position(|i| *i == Item::Wildcard);
    let last_wild = items.iter().rposition(|i| *i == Item::Wildcard);
    match (first_wild, last_wild) {
        (None, _) | (_, None) => {
            if items.len() != fields.len() {
                return None;
            }
            for (i, item) in items.iter().enumerate() {
                if let Item::Column(Some(n)) = item {
                    names[i] = n.clone();
                }
            }
        }
        (Some(first), Some(last)) => {
            let after = items.len() - last - 1;
            if first + after > fields.len() {
                return None;
            }
            for (i, item) in items[..first].iter().enumerate() {
                if let Item::Column(Some(n)) = item {
                    names[i] = n.clone();
                }
            }
            for (j, item) in items[last + 1..].iter().enumerate() {
                if let Item::Column(Some(n)) = item {
                    names[fields.len() - after + j] = n.clone();
                }
            }
        }
    }
    (names != fields).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str, fields: &[&str]) -> Vec<String> {
        let statement = crate::parser::parse(sql).unwrap().pop().unwrap();
        let crate::parser::Statement::DataFusion(datafusion::sql::parser::Statement::Statement(s)) =
            statement
        else {
            panic!("not a query: {sql}")
        };
        let items = select_items(&s).unwrap();
        let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        rename(&items, &fields).unwrap_or(fields)
    }

    #[test]
    fn expressions_are_named_as_postgres_names_them() {
        assert_eq!(
            names(
                "SELECT count(*), AVG(t.fare), 1, 'x', a + 1, a, t.b, c AS d, '1'::integer, x::text, \
                 CAST(1.5 AS numeric), CASE WHEN a THEN 1 END, (count(*)), now(), \"Upper\"(a), \
                 DATE '2026-01-01', current_user, EXISTS (SELECT 1), (SELECT max(z) FROM u) \
                 FROM t",
                &["f"; 19]
            ),
            [
                "count",
                "avg",
                "?column?",
                "?column?",
                "?column?",
                "f",
                "f",
                "f",
                "int4",
                "x",
                "numeric",
                "case",
                "count",
                "now",
                "Upper",
                "date",
                "current_user",
                "exists",
                "max"
            ]
        );
    }

    #[test]
    fn an_array_of_a_subquery_is_named_array() {
        assert_eq!(
            names(
                "SELECT ARRAY(SELECT x FROM u), coalesce(a, b) FROM t",
                &["f", "g"]
            ),
            ["array", "coalesce"]
        );
    }

    #[test]
    fn wildcards_keep_their_columns_and_the_rest_lines_up() {
        assert_eq!(
            names(
                "SELECT count(*), *, 1 FROM t",
                &["count(*)", "a", "b", "Int64(1)"]
            ),
            ["count", "a", "b", "?column?"]
        );
        assert_eq!(
            names("SELECT 1, 2", &["Int64(1)", "Int64(2)"]),
            ["?column?", "?column?"]
        );
        assert_eq!(
            names("SELECT sum(a) FROM t UNION ALL SELECT 2", &["sum(t.a)"]),
            ["sum"]
        );
    }
}
