//! Postgres's untyped literals where DataFusion wants a type: a quoted
//! array literal compared with an array (`polroles <> '{0}'`, as psql's
//! `\dp` writes it) is read as an array of the other side's element type,
//! as Postgres reads an unknown-typed literal. DataFusion's planner hands
//! every binary operator to the registered [`ExprPlanner`]s with the types
//! of both sides known; this one answers for that case only.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ExprSchema, Result, ScalarValue};
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{Expr, ExprSchemable, Operator, binary_expr, cast, lit};
use datafusion::sql::sqlparser::ast::BinaryOperator;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct PgLiteralPlanner;

impl ExprPlanner for PgLiteralPlanner {
    fn plan_binary_op(&self, expr: RawBinaryExpr, schema: &DFSchema) -> Result<PlannerResult<RawBinaryExpr>> {
        let op = match expr.op {
            BinaryOperator::Eq => Operator::Eq,
            BinaryOperator::NotEq => Operator::NotEq,
            BinaryOperator::Lt => Operator::Lt,
            BinaryOperator::LtEq => Operator::LtEq,
            BinaryOperator::Gt => Operator::Gt,
            BinaryOperator::GtEq => Operator::GtEq,
            _ => return Ok(PlannerResult::Original(expr)),
        };
        if let Some(right) = as_array_of(&expr.right, &expr.left, schema) {
            return Ok(PlannerResult::Planned(binary_expr(expr.left, op, right)));
        }
        if let Some(left) = as_array_of(&expr.left, &expr.right, schema) {
            return Ok(PlannerResult::Planned(binary_expr(left, op, expr.right)));
        }
        Ok(PlannerResult::Original(expr))
    }
}

/// `literal` read as an array of `other`'s type, when `other` is an array
/// and `literal` a text literal in Postgres's array syntax.
fn as_array_of(literal: &Expr, other: &Expr, schema: &DFSchema) -> Option<Expr> {
    let Expr::Literal(ScalarValue::Utf8(Some(text)) | ScalarValue::Utf8View(Some(text)), _) = literal else {
        return None;
    };
    let target = other.get_type(schema as &dyn ExprSchema).ok()?;
    if !matches!(
        target,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
    ) {
        return None;
    }
    let elements = crate::parser::array_elements(text)?;
    let items: Vec<Expr> = elements
        .into_iter()
        .map(|e| match e {
            Some(v) => lit(v),
            None => lit(ScalarValue::Utf8(None)),
        })
        .collect();
    Some(cast(
        datafusion::functions_nested::expr_fn::make_array(items),
        target,
    ))
}
