//! Views as SQL: `CREATE [OR REPLACE] VIEW`, `DROP VIEW`, and what an
//! object's dropping would break.
//!
//! DataFusion keeps a view's plan and inlines it where the view is read:
//! in an ad-hoc SELECT, and in a continuous query, whose streaming planner
//! sees the streams under it. Sluice records each view in the durable
//! catalog so that it comes back after a restart, and refuses to drop an
//! object a view, a materialized view or a sink reads: the reader would
//! not come back.

use std::ops::ControlFlow;

use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, Query, TableFactor, Value, Visit, Visitor,
};

use super::Session;
use crate::catalog::{CatalogEntry, DurableCatalog, ObjectKind};
use crate::error::{ErrorKind, Result, SluiceError};
use crate::parser::{Statement, normalize_name};

impl Session {
    /// `CREATE [OR REPLACE] VIEW name AS query` (planned into `plan`),
    /// recorded durably as `sql` when `persist`.
    pub(crate) async fn create_view(
        &self,
        plan: LogicalPlan,
        name: &str,
        sql: &str,
        replace: bool,
        if_not_exists: bool,
        persist: bool,
    ) -> Result<()> {
        let mut catalog = self.engine.inner.catalog.lock().await;
        match catalog.get(name) {
            // Restoring: the entry is this view.
            Some(_) if !persist => {}
            Some(e) if e.kind == ObjectKind::View && if_not_exists => return Ok(()),
            Some(e) if e.kind == ObjectKind::View && replace => {
                if let Some(reader) = reader_of(&catalog, name)? {
                    return Err(SluiceError::new(
                        ErrorKind::DependentObjectsStillExist,
                        format!(
                            "cannot replace view {name}: {} {} reads it; drop {} first",
                            reader.kind.noun(),
                            reader.name,
                            reader.name
                        ),
                    ));
                }
            }
            Some(e) => {
                if if_not_exists {
                    return Ok(());
                }
                return Err(SluiceError::new(
                    ErrorKind::DuplicateObject,
                    if replace {
                        format!("\"{name}\" is a {}, not a view", e.kind.noun())
                    } else {
                        format!("relation \"{name}\" already exists")
                    },
                ));
            }
            None if self.ctx.table_exist(name)? => {
                return Err(SluiceError::new(
                    ErrorKind::DuplicateObject,
                    format!("relation \"{name}\" already exists"),
                ));
            }
            None => {}
        }
        self.ctx.execute_logical_plan(plan).await?;
        if persist
            && let Err(e) = catalog.put(CatalogEntry {
                name: name.to_string(),
                kind: ObjectKind::View,
                sql: sql.to_string(),
                owner: Some(self.user.clone()),
            })
        {
            // Without a durable entry the view would vanish on restart.
            let _ = self.ctx.deregister_table(name);
            return Err(e);
        }
        Ok(())
    }

    /// `DROP VIEW [IF EXISTS] a, b`: all of them, or none when one can't be
    /// dropped.
    pub(crate) async fn drop_views(&self, names: &[String], if_exists: bool) -> Result<()> {
        let mut catalog = self.engine.inner.catalog.lock().await;
        let mut dropping = Vec::new();
        for name in names {
            match catalog.get(name).map(|e| e.kind) {
                Some(ObjectKind::View) => {
                    if let Some(reader) = reader_of(&catalog, name)?
                        && !names.contains(&reader.name)
                    {
                        return Err(still_read(name, ObjectKind::View, reader));
                    }
                    dropping.push(name.clone());
                }
                Some(kind) => return Err(kind.not_a(name, ObjectKind::View)),
                None if if_exists => {}
                None => {
                    return Err(SluiceError::new(
                        ErrorKind::UndefinedTable,
                        format!("view \"{name}\" does not exist"),
                    ));
                }
            }
        }
        for name in dropping {
            catalog.remove(&name)?;
            let _ = self.ctx.deregister_table(name.as_str());
        }
        Ok(())
    }
}

/// Refuses to drop `name` (a `kind`) while `reader` reads it.
pub(crate) fn still_read(name: &str, kind: ObjectKind, reader: &CatalogEntry) -> SluiceError {
    SluiceError::new(
        ErrorKind::DependentObjectsStillExist,
        format!(
            "cannot drop {} {name}: {} {} reads it; drop {} first",
            kind.noun(),
            reader.kind.noun(),
            reader.name,
            reader.name
        ),
    )
}

/// A view, materialized view or sink whose query reads `name`, if one does.
pub(crate) fn reader_of<'a>(catalog: &'a DurableCatalog, name: &str) -> Result<Option<&'a CatalogEntry>> {
    for entry in catalog.entries() {
        if entry.name == name {
            continue;
        }
        let query = match crate::parser::parse(&entry.sql)?.pop() {
            Some(Statement::CreateSink(c)) | Some(Statement::CreateMaterializedView(c)) => c.query,
            Some(Statement::DataFusion(datafusion::sql::parser::Statement::Statement(s))) => match *s {
                datafusion::sql::sqlparser::ast::Statement::CreateView(v) => v.query,
                _ => continue,
            },
            _ => continue,
        };
        if reads(&query, name) {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// Whether `query` reads relation `name`: in FROM, as a window's or a
/// temporal join's input (`TUMBLE(name, ...)`, `name FOR SYSTEM_TIME AS
/// OF`, which the parser turns into calls naming it), or in a subquery. A
/// CTE of that name counts too: a reader wrongly kept is better than one
/// that would not come back.
fn reads(query: &Query, name: &str) -> bool {
    struct Reads<'a> {
        name: &'a str,
    }
    impl Visitor for Reads<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            let TableFactor::Table { name, args, .. } = factor else {
                return ControlFlow::Continue(());
            };
            let Some(args) = args else {
                return if normalize_name(name) == self.name {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                };
            };
            // A table function's first argument names its input.
            let first = args.args.first().and_then(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            });
            let named = match first {
                Some(SqlExpr::Value(v)) => match &v.value {
                    Value::SingleQuotedString(s) => s.eq_ignore_ascii_case(self.name),
                    _ => false,
                },
                Some(SqlExpr::Identifier(id)) => id.value.eq_ignore_ascii_case(self.name),
                _ => false,
            };
            if named {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    query.visit(&mut Reads { name }).is_break()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(sql: &str) -> Query {
        match crate::parser::parse(sql).unwrap().pop() {
            Some(Statement::CreateMaterializedView(c)) => *c.query,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_query_reads_the_relations_it_names_wherever_they_stand() {
        let cases = [
            ("SELECT * FROM bid", "bid", true),
            ("SELECT * FROM bid", "bids", false),
            (
                "SELECT * FROM a JOIN (SELECT * FROM bid) b ON a.x = b.x",
                "bid",
                true,
            ),
            ("SELECT * FROM a WHERE x IN (SELECT x FROM bid)", "bid", true),
            (
                "SELECT * FROM TUMBLE(bid, date_time, INTERVAL '1' SECOND)",
                "bid",
                true,
            ),
            (
                "SELECT * FROM a JOIN rates FOR SYSTEM_TIME AS OF a.ts AS r ON a.c = r.c",
                "rates",
                true,
            ),
            ("SELECT 'bid' AS bid FROM a", "bid", false),
        ];
        for (sql, name, want) in cases {
            let q = query(&format!("CREATE MATERIALIZED VIEW v AS {sql}"));
            assert_eq!(reads(&q, name), want, "{sql} reads {name}");
        }
    }
}
