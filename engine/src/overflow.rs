//! Integer `+`, `-` and `*` that fail on overflow, as Postgres' do
//! (22003 "numeric value out of range"), instead of wrapping:
//! `SELECT 9223372036854775807 + 1` is an error, not -9223372036854775808.
//!
//! DataFusion's binary expression wraps unless it is built with
//! `fail_on_overflow`, which its planner never sets, and its constant
//! folding wraps the same way. So an analyzer rule, run after type
//! coercion and before any folding, replaces integer arithmetic with calls
//! of [`CheckedArithmetic`] functions (arrow's checked kernels). A constant
//! that overflows is left unfolded by the simplifier (it keeps expressions
//! whose evaluation fails) and raises the error when the query runs. Output
//! names stay those of the original expressions.

use std::sync::Arc;

use arrow::array::Datum;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// `checked_add`, `checked_sub`, `checked_mul` over two integers of one
/// type.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CheckedArithmetic {
    op: Op,
    signature: Signature,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Add,
    Sub,
    Mul,
}

impl CheckedArithmetic {
    fn udf(op: Op) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(Self {
            op,
            signature: Signature::any(2, Volatility::Immutable),
        }))
    }
}

impl ScalarUDFImpl for CheckedArithmetic {
    fn name(&self) -> &str {
        match self.op {
            Op::Add => "checked_add",
            Op::Sub => "checked_sub",
            Op::Mul => "checked_mul",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    /// Nullable when either side is, as the binary expression it replaces.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let fields = args.arg_fields;
        Ok(Arc::new(Field::new(
            self.name(),
            fields[0].data_type().clone(),
            fields.iter().any(|f| f.is_nullable()),
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [l, r] = args.args.as_slice() else {
            return datafusion::common::internal_err!("{} takes two arguments", self.name());
        };
        let kernel = match self.op {
            Op::Add => arrow::compute::kernels::numeric::add,
            Op::Sub => arrow::compute::kernels::numeric::sub,
            Op::Mul => arrow::compute::kernels::numeric::mul,
        };
        let datum = |v: &ColumnarValue| -> Result<Box<dyn Datum>> {
            Ok(match v {
                ColumnarValue::Array(a) => Box::new(a.clone()),
                ColumnarValue::Scalar(s) => Box::new(s.to_scalar()?),
            })
        };
        let out = kernel(datum(l)?.as_ref(), datum(r)?.as_ref())?;
        match (l, r) {
            (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_)) => {
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
            }
            _ => Ok(ColumnarValue::Array(out)),
        }
    }
}

/// The analyzer rule (see the module docs).
#[derive(Debug)]
pub struct CheckedIntegerArithmetic {
    add: Arc<ScalarUDF>,
    sub: Arc<ScalarUDF>,
    mul: Arc<ScalarUDF>,
}

impl Default for CheckedIntegerArithmetic {
    fn default() -> Self {
        Self {
            add: CheckedArithmetic::udf(Op::Add),
            sub: CheckedArithmetic::udf(Op::Sub),
            mul: CheckedArithmetic::udf(Op::Mul),
        }
    }
}

impl AnalyzerRule for CheckedIntegerArithmetic {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| self.rewrite_plan(plan))
            .data()
    }

    fn name(&self) -> &str {
        "sluice_checked_integer_arithmetic"
    }
}

impl CheckedIntegerArithmetic {
    fn rewrite_plan(&self, plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
        // The schema the node's expressions are over: its inputs' (none for
        // VALUES, whose expressions are constants).
        let mut schema = DFSchema::empty();
        for input in plan.inputs() {
            schema.merge(input.schema());
        }
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            let saved = names.save(&expr);
            let rewritten = self.rewrite_expr(expr, &schema)?;
            Ok(rewritten.update_data(|e| saved.restore(e)))
        })
    }

    fn rewrite_expr(&self, expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        expr.transform_up(|e| {
            let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else {
                return Ok(Transformed::no(e));
            };
            let func = match op {
                Operator::Plus => &self.add,
                Operator::Minus => &self.sub,
                Operator::Multiply => &self.mul,
                _ => return Ok(Transformed::no(e)),
            };
            match (left.get_type(schema), right.get_type(schema)) {
                (Ok(l), Ok(r)) if l == r && l.is_integer() => {
                    let args = vec![left.as_ref().clone(), right.as_ref().clone()];
                    Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                        func.clone(),
                        args,
                    ))))
                }
                _ => Ok(Transformed::no(e)),
            }
        })
    }
}
