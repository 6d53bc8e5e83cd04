//! `array_agg` of an `oid` column is an `oid[]`, as in Postgres.
//!
//! A catalog `oid` is an Arrow `Int32` marked with arrow-pg's
//! `pg.oid_alias = oid` field metadata. DataFusion's `array_agg` builds its
//! list from the input's data type only, so the marking was lost and
//! `array_agg(atttypid)` was described as `int4[]`. asyncpg's type
//! introspection query returns such a column (`attrtypoids`) and knows how to
//! read an `oid[]` without asking; an `int4[]` it must introspect with that
//! same query, without end.
//!
//! This `array_agg` is DataFusion's, but over an oid column its list holds
//! unsigned 32-bit values, which is what an oid is. The list's data type says
//! it, so `CASE`, scalar subqueries, unions and recursive CTEs carry it (field
//! metadata is lost on several of those paths), and the wire protocol names
//! a list of `UInt32` `oid[]`: Postgres has no other unsigned 32-bit type.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::functions_aggregate::array_agg::ArrayAgg;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, ReversedUDAF, Signature,
};

/// arrow-pg's field-metadata key marking an `Int32` as an oid (or an alias).
pub const OID_ALIAS_KEY: &str = "pg.oid_alias";

/// Whether `field` is a catalog `oid` column.
pub fn is_oid(field: &Field) -> bool {
    field.data_type() == &DataType::Int32 && field.metadata().get(OID_ALIAS_KEY).is_some_and(|k| k == "oid")
}

/// The item field of an `oid[]` list.
pub fn oid_item_field() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::UInt32, true))
}

/// Whether `t` is an `oid[]` list (of one dimension).
pub fn is_oid_list(t: &DataType) -> bool {
    match t {
        DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
            item.data_type() == &DataType::UInt32
        }
        _ => false,
    }
}

/// `array_agg`, giving `oid[]` over an oid column.
#[derive(Debug)]
pub struct PgArrayAgg {
    inner: Arc<dyn AggregateUDFImpl>,
    pre_ordered: bool,
}

impl PartialEq for PgArrayAgg {
    fn eq(&self, other: &Self) -> bool {
        self.pre_ordered == other.pre_ordered
    }
}

impl Eq for PgArrayAgg {}

impl Hash for PgArrayAgg {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "pg_array_agg".hash(state);
        self.pre_ordered.hash(state);
    }
}

impl Default for PgArrayAgg {
    fn default() -> Self {
        PgArrayAgg {
            inner: Arc::new(ArrayAgg::default()),
            pre_ordered: false,
        }
    }
}

impl PgArrayAgg {
    pub fn udaf() -> AggregateUDF {
        AggregateUDF::new_from_impl(PgArrayAgg::default())
    }

    fn over_oids(fields: &[FieldRef]) -> bool {
        fields.first().is_some_and(|f| is_oid(f))
    }
}

impl AggregateUDFImpl for PgArrayAgg {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        let field = self.inner.return_field(arg_fields)?;
        if !Self::over_oids(arg_fields) {
            return Ok(field);
        }
        Ok(Arc::new(Field::new(
            field.name(),
            DataType::List(oid_item_field()),
            field.is_nullable(),
        )))
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let over_oids = Self::over_oids(acc_args.expr_fields);
        let inner = self.inner.accumulator(acc_args)?;
        Ok(if over_oids {
            Box::new(OidList(inner))
        } else {
            inner
        })
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !Self::over_oids(args.expr_fields) && self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        self.inner.create_groups_accumulator(args)
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let Some(inner) = Arc::clone(&self.inner).with_beneficial_ordering(beneficial_ordering)? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(PgArrayAgg {
            inner,
            pre_ordered: beneficial_ordering,
        })))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        match self.inner.reverse_expr() {
            // array_agg reverses into itself (its ordering is flipped).
            ReversedUDAF::Reversed(_) => {
                ReversedUDAF::Reversed(Arc::new(AggregateUDF::new_from_impl(PgArrayAgg {
                    inner: Arc::clone(&self.inner),
                    pre_ordered: self.pre_ordered,
                })))
            }
            other => other,
        }
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner.supports_null_handling_clause()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// array_agg's accumulator, its result as an `oid[]` list.
#[derive(Debug)]
struct OidList(Box<dyn Accumulator>);

impl Accumulator for OidList {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0.update_batch(values)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.evaluate()?.cast_to(&DataType::List(oid_item_field()))
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.state()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.merge_batch(states)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0.retract_batch(values)
    }

    fn supports_retract_batch(&self) -> bool {
        self.0.supports_retract_batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;
    use std::collections::HashMap;

    #[tokio::test]
    async fn array_agg_of_an_oid_column_is_an_oid_list_and_of_others_unchanged() {
        let ctx = SessionContext::new();
        ctx.register_udaf(PgArrayAgg::udaf());
        let oid = Field::new("o", DataType::Int32, true)
            .with_metadata(HashMap::from([(OID_ALIAS_KEY.to_string(), "oid".to_string())]));
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            oid,
            Field::new("i", DataType::Int32, true),
        ]));
        let batch = arrow::array::RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow::array::Int32Array::from(vec![26, 16, 25])),
                Arc::new(arrow::array::Int32Array::from(vec![3, 1, 2])),
            ],
        )
        .unwrap();
        ctx.register_batch("t", batch).unwrap();
        let df = ctx
            .sql(
                "SELECT array_agg(o ORDER BY i) AS a, array_agg(i) AS b, \
                 CASE WHEN true THEN (SELECT array_agg(o) FROM t) ELSE NULL END AS c FROM t",
            )
            .await
            .unwrap();
        let batches = df.collect().await.unwrap();
        let schema = batches[0].schema();
        assert!(is_oid_list(schema.field(0).data_type()), "{schema:?}");
        assert_eq!(
            schema.field(1).data_type(),
            &DataType::new_list(DataType::Int32, true)
        );
        assert!(is_oid_list(schema.field(2).data_type()), "{schema:?}");
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("[16, 25, 26]"), "{text}");
    }
}
