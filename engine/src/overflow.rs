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

use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Datum};
use arrow::datatypes::{
    ArrowNativeTypeOp, ArrowPrimitiveType, DataType, Field, FieldRef, Int64Type, UInt64Type,
};
use arrow::error::ArrowError;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::functions_aggregate::sum::Sum;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, BinaryExpr, ColumnarValue, Documentation, EmitTo, Expr,
    ExprSchemable, GroupsAccumulator, LogicalPlan, Operator, ReturnFieldArgs, ReversedUDAF,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, SetMonotonicity, Signature, StatisticsArgs, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion_functions_aggregate_common::aggregate::groups_accumulator::prim_op::PrimitiveGroupsAccumulator;

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

/// `sum` whose integer forms fail with 22003 when the sum leaves the range
/// of its type, where DataFusion's wraps (`sum` of 9223372036854775807 and 1
/// was -9223372036854775808). Registered under the name `sum`, so it
/// replaces the built-in everywhere (ad-hoc queries, windows, updating
/// aggregates); floats, decimals, intervals and DISTINCT keep DataFusion's
/// accumulators. `SUM(x + c)` is no longer rewritten to
/// `SUM(x) + c * COUNT(x)`, which would overflow differently.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct CheckedSum {
    inner: Sum,
}

impl CheckedSum {
    pub fn udaf() -> Arc<AggregateUDF> {
        Arc::new(AggregateUDF::new_from_impl(Self::default()))
    }
}

fn sum_overflow(data_type: &DataType) -> DataFusionError {
    ArrowError::ArithmeticOverflow(format!("sum out of range for {data_type}")).into()
}

impl AggregateUDFImpl for CheckedSum {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        match (args.is_distinct, args.return_field.data_type()) {
            (false, DataType::Int64) => Ok(Box::new(CheckedSumAccumulator::<Int64Type>::new(false))),
            (false, DataType::UInt64) => Ok(Box::new(CheckedSumAccumulator::<UInt64Type>::new(false))),
            _ => self.inner.accumulator(args),
        }
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        match args.return_field.data_type() {
            DataType::Int64 => Ok(Box::new(CheckedGroupsSum::new::<Int64Type>())),
            DataType::UInt64 => Ok(Box::new(CheckedGroupsSum::new::<UInt64Type>())),
            _ => self.inner.create_groups_accumulator(args),
        }
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        match (args.is_distinct, args.return_field.data_type()) {
            (false, DataType::Int64) => Ok(Box::new(CheckedSumAccumulator::<Int64Type>::new(true))),
            (false, DataType::UInt64) => Ok(Box::new(CheckedSumAccumulator::<UInt64Type>::new(true))),
            _ => self.inner.create_sliding_accumulator(args),
        }
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        self.inner.reverse_expr()
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.set_monotonicity(data_type)
    }

    fn value_from_stats(&self, statistics_args: &StatisticsArgs) -> Option<ScalarValue> {
        self.inner.value_from_stats(statistics_args)
    }
}

/// The sum of `Int64` or `UInt64` values kept exactly (in i128) and checked
/// against the type when read: a sum that dips out of range and comes back
/// (a retraction before its insert) is still right. The sliding form (the
/// one that takes retractions) keeps DataFusion's state layout, the sum and
/// the count of values, so earlier checkpoints restore into it.
#[derive(Debug)]
struct CheckedSumAccumulator<T> {
    sum: i128,
    count: u64,
    sliding: bool,
    _type: std::marker::PhantomData<T>,
}

impl<T> CheckedSumAccumulator<T>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i128> + TryFrom<i128>,
{
    fn new(sliding: bool) -> Self {
        Self {
            sum: 0,
            count: 0,
            sliding,
            _type: std::marker::PhantomData,
        }
    }

    /// The sum and the number of non-null values in `values`.
    fn total(values: &ArrayRef) -> (i128, u64) {
        let values = values.as_primitive::<T>();
        let count = (values.len() - values.null_count()) as u64;
        let sum = if values.null_count() == 0 {
            values.values().iter().map(|&v| v.into()).sum()
        } else {
            values.iter().flatten().map(Into::into).sum()
        };
        (sum, count)
    }

    fn value(&self) -> Result<Option<T::Native>> {
        if self.count == 0 {
            return Ok(None);
        }
        T::Native::try_from(self.sum)
            .map(Some)
            .map_err(|_| sum_overflow(&T::DATA_TYPE))
    }
}

impl<T> Accumulator for CheckedSumAccumulator<T>
where
    T: ArrowPrimitiveType + Send + Sync + std::fmt::Debug,
    T::Native: Into<i128> + TryFrom<i128>,
{
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (sum, count) = Self::total(&values[0]);
        self.sum += sum;
        self.count += count;
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (sum, count) = Self::total(&values[0]);
        self.sum -= sum;
        self.count = self.count.saturating_sub(count);
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        self.sliding
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        ScalarValue::new_primitive::<T>(self.value()?, &T::DATA_TYPE)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let sum = self.evaluate()?;
        if self.sliding {
            Ok(vec![sum, ScalarValue::UInt64(Some(self.count))])
        } else {
            Ok(vec![sum])
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (sum, nonnull) = Self::total(&states[0]);
        self.sum += sum;
        match states.get(1) {
            Some(counts) => {
                let counts = counts.as_primitive::<UInt64Type>();
                self.count += counts.iter().flatten().sum::<u64>();
            }
            None => self.count += nonnull,
        }
        Ok(())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// DataFusion's per-group primitive sum with a checked add: an overflow in
/// any group fails the batch that caused it.
struct CheckedGroupsSum {
    inner: Box<dyn GroupsAccumulator>,
    overflowed: Arc<AtomicBool>,
    data_type: DataType,
}

impl CheckedGroupsSum {
    fn new<T>() -> Self
    where
        T: ArrowPrimitiveType + Send,
    {
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = overflowed.clone();
        let inner =
            PrimitiveGroupsAccumulator::<T, _>::new(&T::DATA_TYPE, move |x: &mut T::Native, y| {
                match x.add_checked(y) {
                    Ok(sum) => *x = sum,
                    Err(_) => flag.store(true, Ordering::Relaxed),
                }
            });
        Self {
            inner: Box::new(inner),
            overflowed,
            data_type: T::DATA_TYPE,
        }
    }

    fn check(&self) -> Result<()> {
        if self.overflowed.load(Ordering::Relaxed) {
            Err(sum_overflow(&self.data_type))
        } else {
            Ok(())
        }
    }
}

impl GroupsAccumulator for CheckedGroupsSum {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner
            .update_batch(values, group_indices, opt_filter, total_num_groups)?;
        self.check()
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.check()?;
        self.inner.evaluate(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.check()?;
        self.inner.state(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner.merge_batch(values, group_indices, total_num_groups)?;
        self.check()
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.inner.convert_to_state(values, opt_filter)
    }

    fn size(&self) -> usize {
        self.inner.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, UInt64Array};

    fn ints(v: &[i64]) -> Vec<ArrayRef> {
        vec![Arc::new(Int64Array::from(v.to_vec()))]
    }

    #[test]
    fn sum_fails_out_of_range_and_recovers_when_retracted() {
        let mut acc = CheckedSumAccumulator::<Int64Type>::new(true);
        acc.update_batch(&ints(&[i64::MAX - 1])).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int64(Some(i64::MAX - 1)));
        acc.update_batch(&ints(&[5])).unwrap();
        let err = acc.evaluate().unwrap_err().to_string();
        assert!(err.contains("sum out of range for Int64"), "{err}");
        // The exact sum is kept, so taking the 5 back brings it in range.
        acc.retract_batch(&ints(&[5])).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int64(Some(i64::MAX - 1)));
        // DataFusion's sliding state layout: the sum and the count.
        assert_eq!(
            acc.state().unwrap(),
            [
                ScalarValue::Int64(Some(i64::MAX - 1)),
                ScalarValue::UInt64(Some(1))
            ]
        );
        acc.retract_batch(&ints(&[i64::MAX - 1])).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int64(None));
    }

    #[test]
    fn merged_states_are_checked() {
        let mut acc = CheckedSumAccumulator::<UInt64Type>::new(false);
        acc.merge_batch(&[Arc::new(UInt64Array::from(vec![Some(u64::MAX), None]))])
            .unwrap();
        assert_eq!(acc.state().unwrap(), [ScalarValue::UInt64(Some(u64::MAX))]);
        acc.merge_batch(&[Arc::new(UInt64Array::from(vec![1]))]).unwrap();
        assert!(acc.evaluate().is_err());
    }

    #[test]
    fn grouped_sum_fails_on_the_batch_that_overflows() {
        let mut acc = CheckedGroupsSum::new::<Int64Type>();
        acc.update_batch(&ints(&[i64::MAX, 7, 1]), &[0, 1, 1], None, 2)
            .unwrap();
        let out = acc.evaluate(EmitTo::All).unwrap();
        assert_eq!(out.as_primitive::<Int64Type>().values(), &[i64::MAX, 8]);
        let mut acc = CheckedGroupsSum::new::<Int64Type>();
        acc.update_batch(&ints(&[i64::MAX]), &[0], None, 1).unwrap();
        let err = acc.update_batch(&ints(&[1]), &[0], None, 1).unwrap_err();
        assert!(err.to_string().contains("sum out of range"), "{err}");
    }
}
