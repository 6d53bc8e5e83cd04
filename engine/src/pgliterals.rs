//! Postgres's untyped literals where DataFusion wants a type: a quoted
//! array literal compared with an array (`polroles <> '{0}'`, as psql's
//! `\dp` writes it) is read as an array of the other side's element type,
//! as Postgres reads an unknown-typed literal. DataFusion's planner hands
//! every binary operator to the registered [`ExprPlanner`]s with the types
//! of both sides known; this one answers for that case, and for numeric
//! division (see [`crate::pgnumeric`]).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ExprSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::Placeholder;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{Expr, ExprSchemable, Operator, binary_expr, cast, lit};
use datafusion::sql::sqlparser::ast::BinaryOperator;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct PgLiteralPlanner;

impl ExprPlanner for PgLiteralPlanner {
    fn plan_binary_op(&self, expr: RawBinaryExpr, schema: &DFSchema) -> Result<PlannerResult<RawBinaryExpr>> {
        if expr.op == BinaryOperator::Divide {
            let left_type = expr.left.get_type(schema as &dyn ExprSchema)?;
            let right_type = expr.right.get_type(schema as &dyn ExprSchema)?;
            // A parameter divided by or dividing a numeric is a numeric, as
            // `$1::numeric` is.
            let (left, left_type) = numeric_parameter(&expr.left, left_type, &right_type);
            let (right, right_type) = numeric_parameter(&expr.right, right_type, &left_type);
            if let Some(planned) = crate::pgnumeric::divide(&left, &right, &left_type, &right_type) {
                return Ok(PlannerResult::Planned(planned));
            }
            return Ok(PlannerResult::Original(expr));
        }
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

/// `e` typed as NUMERIC when it is a parameter of no type yet and `other`
/// is a decimal; else `e` as it is.
fn numeric_parameter(e: &Expr, own: DataType, other: &DataType) -> (Expr, DataType) {
    match e {
        Expr::Placeholder(p) if p.field.is_none() && matches!(other, DataType::Decimal128(..)) => {
            let numeric = DataType::Decimal128(38, 10);
            let field = std::sync::Arc::new(datafusion::arrow::datatypes::Field::new(
                "",
                numeric.clone(),
                true,
            ));
            (
                Expr::Placeholder(Placeholder::new_with_field(p.id.clone(), Some(field))),
                numeric,
            )
        }
        _ => (e.clone(), own),
    }
}
