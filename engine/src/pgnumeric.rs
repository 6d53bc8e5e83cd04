//! Postgres's numeric division.
//!
//! DataFusion divides decimals to the dividend's scale plus 4 (`1.0 / 3` is
//! `0.33333`), fewer digits than a float8 holds. Postgres picks the scale
//! of each quotient so that it has at least 16 significant digits, and never
//! fewer than either input's scale (`1.0 / 3` is `0.33333333333333333333`,
//! `10 / 4.0` is `2.5000000000000000`), rounding the last digit half away
//! from zero.
//!
//! An Arrow column has one scale for all its rows, so:
//!
//! - a quotient of two constants gets exactly Postgres's scale (its value
//!   is known when the query is planned);
//! - any other quotient gets 20 digits after the point (at least 16
//!   significant ones for quotients above 0.0001), fewer only when the
//!   integer digits the quotient may need leave no room in Decimal128's 38,
//!   and never fewer than either input's scale.
//!
//! Division by zero is 22012; a quotient too large for its type is 22003.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Builder};
use arrow::datatypes::{DataType, Decimal128Type, Field, FieldRef, i256};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::{ErrorKind, SluiceError};

/// Digits Decimal128 holds.
const MAX_PRECISION: i32 = 38;
/// Postgres's NUMERIC_MIN_SIG_DIGITS.
const MIN_SIG_DIGITS: i32 = 16;
/// The scale of a quotient whose value is not known when planning.
const COLUMN_SCALE: i32 = 20;

static NUMERIC_DIV: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    Arc::new(ScalarUDF::new_from_impl(NumericDiv {
        signature: Signature::any(2, Volatility::Immutable),
    }))
});

/// `left / right` the Postgres way, when one side is a decimal and the
/// other a decimal or an integer; None for any other pair of types (floats
/// stay floats, integers divide as integers).
pub fn divide(left: &Expr, right: &Expr, left_type: &DataType, right_type: &DataType) -> Option<Expr> {
    let exact = |t: &DataType| decimal_shape(t).is_some();
    let decimal = |t: &DataType| matches!(t, DataType::Decimal128(..));
    if !(exact(left_type) && exact(right_type) && (decimal(left_type) || decimal(right_type))) {
        return None;
    }
    Some(Expr::ScalarFunction(ScalarFunction::new_udf(
        NUMERIC_DIV.clone(),
        vec![left.clone(), right.clone()],
    )))
}

/// (precision, scale) of an exact numeric type: a Decimal128's own, an
/// integer's digits with scale 0.
fn decimal_shape(t: &DataType) -> Option<(i32, i32)> {
    Some(match t {
        DataType::Decimal128(p, s) => (*p as i32, *s as i32),
        DataType::Int8 | DataType::UInt8 => (3, 0),
        DataType::Int16 | DataType::UInt16 => (5, 0),
        DataType::Int32 | DataType::UInt32 => (10, 0),
        DataType::Int64 => (19, 0),
        DataType::UInt64 => (20, 0),
        _ => return None,
    })
}

/// A constant's unscaled value and scale, or None when it is not an exact
/// number (or NULL).
fn constant(v: &ScalarValue) -> Option<(i128, i32)> {
    Some(match v {
        ScalarValue::Decimal128(Some(v), _, s) => (*v, *s as i32),
        ScalarValue::Int8(Some(v)) => (*v as i128, 0),
        ScalarValue::Int16(Some(v)) => (*v as i128, 0),
        ScalarValue::Int32(Some(v)) => (*v as i128, 0),
        ScalarValue::Int64(Some(v)) => (*v as i128, 0),
        ScalarValue::UInt8(Some(v)) => (*v as i128, 0),
        ScalarValue::UInt16(Some(v)) => (*v as i128, 0),
        ScalarValue::UInt32(Some(v)) => (*v as i128, 0),
        ScalarValue::UInt64(Some(v)) => (*v as i128, 0),
        _ => return None,
    })
}

/// Decimal digits of |v| (1 for 0).
fn digits(v: i128) -> i32 {
    let v = v.unsigned_abs();
    if v == 0 { 1 } else { v.ilog10() as i32 + 1 }
}

/// The weight and first digit of `v * 10^-scale` in base 10,000, as
/// Postgres stores a numeric (0 and 0 for zero).
fn base_10000_lead(v: i128, scale: i32) -> (i32, u128) {
    if v == 0 {
        return (0, 0);
    }
    // The decimal exponent of the leading digit, and the base-10,000
    // digit that holds it.
    let exponent = digits(v) - 1 - scale;
    let weight = exponent.div_euclid(4);
    let shift = scale + 4 * weight;
    let magnitude = v.unsigned_abs();
    let first = if shift >= 0 {
        magnitude / 10u128.pow(shift as u32)
    } else {
        // At most 10^3: the leading base-10,000 digit has four decimal
        // digits at most.
        magnitude.saturating_mul(10u128.pow((-shift) as u32))
    };
    (weight, first)
}

/// Postgres's result scale for `a / b` (numeric.c's `select_div_scale`).
fn postgres_scale((a, sa): (i128, i32), (b, sb): (i128, i32)) -> i32 {
    let (w1, f1) = base_10000_lead(a, sa);
    let (w2, f2) = base_10000_lead(b, sb);
    let mut qweight = w1 - w2;
    if f1 <= f2 {
        qweight -= 1;
    }
    (MIN_SIG_DIGITS - qweight * 4).max(sa).max(sb).clamp(0, 1000)
}

/// `a / b` rounded half away from zero to `scale` digits, with `a` and `b`
/// at scales `sa` and `sb`; None when b is zero.
fn divide_scaled(a: i128, sa: i32, b: i128, sb: i32, scale: i32) -> Option<i256> {
    if b == 0 {
        return None;
    }
    // a / 10^sa / (b / 10^sb) * 10^scale = a * 10^(scale - sa + sb) / b
    let shift = scale - sa + sb;
    let (mut num, mut den) = (i256::from_i128(a), i256::from_i128(b));
    let ten = i256::from_i128(10);
    if shift >= 0 {
        num = num.wrapping_mul(ten.wrapping_pow(shift as u32));
    } else {
        den = den.wrapping_mul(ten.wrapping_pow((-shift) as u32));
    }
    let q = num.wrapping_div(den);
    let r = num.wrapping_rem(den);
    let twice = r.wrapping_abs().wrapping_mul(i256::from_i128(2));
    if twice >= den.wrapping_abs() {
        let away = if (num < i256::ZERO) != (den < i256::ZERO) {
            i256::MINUS_ONE
        } else {
            i256::ONE
        };
        return Some(q.wrapping_add(away));
    }
    Some(q)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct NumericDiv {
    signature: Signature,
}

impl NumericDiv {
    /// The quotient's (precision, scale).
    fn result_shape(&self, types: &[DataType], constants: &[Option<&ScalarValue>]) -> Result<(u8, i8)> {
        let [lt, rt] = types else {
            return plan_err!("numeric division takes two arguments");
        };
        let (Some((pa, sa)), Some((_, sb))) = (decimal_shape(lt), decimal_shape(rt)) else {
            return plan_err!("numeric division of {lt} and {rt}");
        };
        let a = constants.first().copied().flatten().and_then(constant);
        let b = constants.get(1).copied().flatten().and_then(constant);
        if let (Some(a), Some(b)) = (a, b)
            && b.0 != 0
        {
            let scale = postgres_scale(a, b).min(MAX_PRECISION - 1);
            let q = divide_scaled(a.0, a.1, b.0, b.1, scale).unwrap_or(i256::ZERO);
            let int_digits = q.to_i128().map(digits).unwrap_or(MAX_PRECISION + 1) - scale;
            let precision = (int_digits.max(1) + scale).min(MAX_PRECISION);
            return Ok((precision as u8, scale as i8));
        }
        // The integer digits a quotient may need: the dividend's, and one
        // more for each digit after the divisor's point (dividing by 0.01
        // multiplies by 100). A constant needs only its own digits.
        let a_int = a.map_or(pa - sa, |(v, s)| (digits(v) - s).max(1));
        let b_frac = b.map_or(sb, |(_, s)| s);
        let int_digits = (a_int + b_frac).max(1);
        let floor = sa.max(sb).max(0);
        let scale = COLUMN_SCALE
            .min(MAX_PRECISION - int_digits)
            .max(floor)
            .min(MAX_PRECISION);
        let precision = (int_digits + scale).min(MAX_PRECISION);
        Ok((precision as u8, scale as i8))
    }
}

impl ScalarUDFImpl for NumericDiv {
    fn name(&self) -> &str {
        "numeric_div"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let (p, s) = self.result_shape(arg_types, &[])?;
        Ok(DataType::Decimal128(p, s))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let types: Vec<DataType> = args.arg_fields.iter().map(|f| f.data_type().clone()).collect();
        let (p, s) = self.result_shape(&types, args.scalar_arguments)?;
        let nullable = args.arg_fields.iter().any(|f| f.is_nullable());
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Decimal128(p, s),
            nullable,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let DataType::Decimal128(precision, scale) = args.return_field.data_type().clone() else {
            return exec_err!("numeric division returns a decimal");
        };
        let scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [a, b] = arrays.as_slice() else {
            return exec_err!("numeric division takes two arguments");
        };
        let (a, sa) = as_decimal(a)?;
        let (b, sb) = as_decimal(b)?;
        let (a, b) = (
            a.as_primitive::<Decimal128Type>(),
            b.as_primitive::<Decimal128Type>(),
        );
        let limit = i256::from_i128(10).wrapping_pow(precision as u32);
        let mut out = Decimal128Builder::with_capacity(a.len());
        for i in 0..a.len() {
            if a.is_null(i) || b.is_null(i) {
                out.append_null();
                continue;
            }
            let Some(q) = divide_scaled(a.value(i), sa, b.value(i), sb, scale as i32) else {
                return Err(SluiceError::new(ErrorKind::DivisionByZero, "division by zero").into_datafusion());
            };
            match q.to_i128().filter(|_| q.wrapping_abs() < limit) {
                Some(q) => out.append_value(q),
                None => {
                    return Err(SluiceError::new(
                        ErrorKind::NumericOutOfRange,
                        format!(
                            "numeric field overflow: a quotient does not fit numeric({precision}, {scale})"
                        ),
                    )
                    .into_datafusion());
                }
            }
        }
        let out: ArrayRef = Arc::new(out.finish().with_precision_and_scale(precision, scale)?);
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// An exact numeric array as Decimal128 (integers at scale 0), with its scale.
fn as_decimal(array: &ArrayRef) -> Result<(ArrayRef, i32)> {
    match array.data_type() {
        DataType::Decimal128(_, s) => Ok((array.clone(), *s as i32)),
        _ => Ok((
            arrow::compute::cast(array, &DataType::Decimal128(MAX_PRECISION as u8, 0))?,
            0,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_picks_the_scale_from_the_values() {
        // 1.0 / 3, 10 / 4.0, 123456789.123 / 0.001, 1 / 30000
        assert_eq!(postgres_scale((10, 1), (3, 0)), 20);
        assert_eq!(postgres_scale((10, 0), (40, 1)), 16);
        assert_eq!(postgres_scale((123456789123, 3), (1, 3)), 8);
        assert_eq!(postgres_scale((1, 0), (30000, 0)), 24);
        assert_eq!(postgres_scale((0, 2), (7, 0)), 20);
    }

    #[test]
    fn quotients_round_half_away_from_zero() {
        let q = |a, sa, b, sb, s| divide_scaled(a, sa, b, sb, s).unwrap().to_i128().unwrap();
        assert_eq!(q(2, 0, 3, 0, 4), 6667);
        assert_eq!(q(-2, 0, 3, 0, 4), -6667);
        assert_eq!(q(1, 0, 8, 0, 2), 13);
        assert_eq!(q(-1, 0, 8, 0, 2), -13);
        assert_eq!(q(250, 2, 5, 1, 1), 50);
        assert!(divide_scaled(1, 0, 0, 0, 2).is_none());
    }
}
