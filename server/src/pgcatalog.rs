//! Sluice's corrections to the `pg_catalog` schema datafusion-pg-catalog
//! serves, made by wrapping its schema provider rather than forking it:
//!
//! - `pg_class.relkind` is `m` for materialized views (the library knows
//!   only tables and views), so psql's `\dm` and SQLAlchemy's
//!   `get_materialized_view_names` list them; and `pg_class` has Postgres'
//!   `relacl` and `reloptions` (NULL: no grants, no storage options),
//!   which SQLAlchemy's index reflection reads;
//! - `pg_index` is empty and typed as Postgres types it (`indkey` an
//!   `int2vector`, here a list of smallints): the library serves rows
//!   exported from a Postgres' own system catalog with those columns as
//!   text, which `unnest(indkey)` in SQLAlchemy's reflection cannot take.
//!   Sluice has no indexes;
//! - `pg_proc`'s argument vectors and `pg_constraint`'s key vectors are
//!   arrays, so `proargtypes::regtype[]` in pgcli's function list casts and
//!   `conkey[i]` in pgjdbc's key metadata indexes;
//! - the access-control lists `nspacl`, `attacl`, `typacl` and `proacl`
//!   are (NULL) text arrays, and `pg_policy.polroles` an oid array, as
//!   psql's `\dn+` and `\dp` read them;
//! - `pg_attribute` types each column as it is where the library falls
//!   back to `text` (arrays of any element, interval, uuid, json, jsonb),
//!   from the relation's Arrow schema;
//! - `pg_settings` has the settings fixed when Postgres is built
//!   (`max_index_keys`, which pgjdbc reads before key metadata).

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use pgwire::api::Type;
use sluice_engine::Engine;
use sluice_engine::datafusion::catalog::{SchemaProvider, Session, TableProvider};
use sluice_engine::datafusion::datasource::{MemTable, TableType};
use sluice_engine::datafusion::error::Result;
use sluice_engine::datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use sluice_engine::datafusion::physical_plan::ExecutionPlan;
use sluice_engine::datafusion::prelude::SessionContext;

/// Replaces the `pg_catalog` schema of `catalog` with the corrected one.
pub(crate) fn install(ctx: &SessionContext, catalog: &str, engine: Engine) -> anyhow::Result<()> {
    let catalog = ctx
        .catalog(catalog)
        .ok_or_else(|| anyhow::anyhow!("catalog {catalog} not found"))?;
    let inner = catalog
        .schema("pg_catalog")
        .ok_or_else(|| anyhow::anyhow!("pg_catalog is not installed"))?;
    catalog.register_schema("pg_catalog", Arc::new(PgCatalog { inner, engine }))?;
    ctx.register_udf(FormatTypes::udf());
    Ok(())
}

#[derive(Debug)]
struct PgCatalog {
    inner: Arc<dyn SchemaProvider>,
    engine: Engine,
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(table) = self.inner.table(name).await? else {
            return Ok(None);
        };
        Ok(Some(match name {
            "pg_class" => Arc::new(Corrected {
                inner: table,
                engine: self.engine.clone(),
                kind: Correction::PgClass,
                catalog: None,
            }),
            "pg_settings" => Arc::new(Corrected {
                inner: table,
                engine: self.engine.clone(),
                kind: Correction::PgSettings,
                catalog: None,
            }),
            "pg_constraint" => Arc::new(Corrected {
                inner: table,
                engine: self.engine.clone(),
                kind: Correction::Vectors(PG_CONSTRAINT_VECTORS),
                catalog: None,
            }),
            "pg_proc" => Arc::new(Corrected {
                inner: table,
                engine: self.engine.clone(),
                kind: Correction::Vectors(PG_PROC_VECTORS),
                catalog: None,
            }),
            "pg_attribute" => Arc::new(Corrected {
                inner: table,
                engine: self.engine.clone(),
                kind: Correction::PgAttribute,
                catalog: Some(self.inner.clone()),
            }),
            "pg_namespace" | "pg_type" => Arc::new(Corrected {
                inner: table,
                engine: self.engine.clone(),
                kind: Correction::Vectors(ACL_VECTORS),
                catalog: None,
            }),
            "pg_policy" => Arc::new(Corrected {
                inner: table,
                engine: self.engine.clone(),
                kind: Correction::Vectors(&[("polroles", Elem::Int32)]),
                catalog: None,
            }),
            "pg_roles" => Arc::new(Corrected {
                inner: table,
                engine: self.engine.clone(),
                kind: Correction::PgRoles,
                catalog: None,
            }),
            "pg_matviews" => Arc::new(Corrected {
                inner: table,
                engine: self.engine.clone(),
                kind: Correction::PgMatviews,
                catalog: None,
            }),
            "pg_index" => Arc::new(MemTable::try_new(pg_index_schema(&table.schema()), vec![vec![]])?),
            _ => table,
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// The library marks `pg_attribute.atttypid`, `pg_class.reltype` and
/// `reloftype` as `regtype`; in Postgres they are `oid` (so a client reads
/// numbers, and `array_agg(atttypid)` is an `oid[]`).
fn oids_not_regtypes(schema: SchemaRef) -> SchemaRef {
    const KEY: &str = sluice_engine::oidarrays::OID_ALIAS_KEY;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if matches!(f.name().as_str(), "atttypid" | "reltype" | "reloftype")
                && f.metadata().get(KEY).is_some_and(|k| k == "regtype")
            {
                let mut metadata = f.metadata().clone();
                metadata.insert(KEY.to_string(), "oid".to_string());
                f.as_ref().clone().with_metadata(metadata)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The library's `pg_index` columns, with the vector columns as lists.
fn pg_index_schema(library: &Schema) -> SchemaRef {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    let fields: Vec<Field> = library
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "indkey" | "indoption" => Field::new(f.name(), list(DataType::Int16), f.is_nullable()),
            "indcollation" | "indclass" => Field::new(f.name(), list(DataType::Int32), f.is_nullable()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// A library table with Sluice's corrections, read whole at each scan
/// (catalog tables are small).
#[derive(Debug)]
struct Corrected {
    inner: Arc<dyn TableProvider>,
    engine: Engine,
    kind: Correction,
    /// The library's whole pg_catalog, for corrections that read other
    /// tables of it.
    catalog: Option<Arc<dyn SchemaProvider>>,
}

#[derive(Debug, Clone, Copy)]
enum Correction {
    /// `relkind` `m` for materialized views; `relacl`, `reloptions`.
    PgClass,
    /// Vector columns as arrays (the library has them as text).
    Vectors(&'static [(&'static str, Elem)]),
    /// The ACL vector, and each column's real type where the library
    /// falls back to `text` (it knows a dozen types: `int8[]`, `interval`,
    /// `json`, `uuid`, `varchar` columns all read as `text` in psql's `\d`
    /// and `information_schema.columns`).
    PgAttribute,
    /// Postgres' fixed settings, which clients read (pgjdbc reads
    /// `max_index_keys` before any key or index metadata).
    PgSettings,
    /// Sluice's materialized views and their queries (the library's is
    /// empty): psql's `\d+ view` reads the query with `pg_get_viewdef`.
    PgMatviews,
    /// Each role's oid (the library's are all 0), which `relowner` and
    /// `pg_get_userbyid` name.
    PgRoles,
}

#[async_trait]
impl TableProvider for Corrected {
    fn schema(&self) -> SchemaRef {
        match self.kind {
            Correction::PgClass => oids_not_regtypes(pg_class_schema(&self.inner.schema())),
            Correction::Vectors(v) => vectors_schema(&self.inner.schema(), v),
            Correction::PgAttribute => oids_not_regtypes(vectors_schema(&self.inner.schema(), ACL_VECTORS)),
            Correction::PgSettings | Correction::PgMatviews | Correction::PgRoles => self.inner.schema(),
        }
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let whole = self.inner.scan(state, None, &[], None).await?;
        let batches = sluice_engine::datafusion::physical_plan::collect(whole, state.task_ctx()).await?;
        let schema = self.schema();
        let batches = match self.kind {
            Correction::PgClass => {
                let objects = self.engine.objects().await;
                let views: HashSet<String> = objects
                    .iter()
                    .filter(|e| e.kind == sluice_engine::catalog::ObjectKind::MaterializedView)
                    .map(|e| e.name.clone())
                    .collect();
                // Each relation's owner: the role that created it, else
                // (catalog tables, objects made before owners were kept)
                // the bootstrap user.
                let bootstrap = crate::pgroles::bootstrap_user(&self.engine);
                let owners: std::collections::HashMap<String, String> = objects
                    .into_iter()
                    .map(|e| (e.name, e.owner.unwrap_or_else(|| bootstrap.clone())))
                    .collect();
                batches
                    .into_iter()
                    .map(|b| {
                        let b = set_int32_by_name(b, "relowner", "relname", |name| {
                            crate::pgroles::role_oid(owners.get(name).unwrap_or(&bootstrap), &bootstrap)
                        })?;
                        complete_pg_class(mark_materialized_views(b, &views)?, &schema)
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            Correction::Vectors(_) => batches
                .into_iter()
                .map(|b| typed_vectors(b, &schema))
                .collect::<Result<Vec<_>>>()?,
            Correction::PgAttribute => {
                let types = match &self.catalog {
                    Some(catalog) => ColumnTypes::read(state, catalog).await?,
                    None => ColumnTypes::default(),
                };
                batches
                    .into_iter()
                    .map(|b| types.correct(typed_vectors(b, &schema)?))
                    .collect::<Result<Vec<_>>>()?
            }
            Correction::PgSettings => {
                let mut batches = batches;
                batches.push(fixed_settings(&schema, &batches)?);
                batches
            }
            Correction::PgMatviews => vec![materialized_views(&schema, &self.engine.objects().await)?],
            Correction::PgRoles => {
                let bootstrap = crate::pgroles::bootstrap_user(&self.engine);
                batches
                    .into_iter()
                    .map(|b| {
                        set_int32_by_name(b, "oid", "rolname", |name| {
                            crate::pgroles::role_oid(name, &bootstrap)
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        // Each batch under the corrected schema (its fields' markings).
        let batches = batches
            .into_iter()
            .map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        MemTable::try_new(schema, vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// The Arrow fields of the relations pg_class lists, by pg_class oid.
#[derive(Default)]
struct ColumnTypes {
    fields: std::collections::HashMap<i64, SchemaRef>,
}

impl ColumnTypes {
    /// Reads pg_class and pg_namespace from the library's `catalog` and
    /// each relation's schema from the session's default catalog.
    async fn read(state: &dyn Session, catalog: &Arc<dyn SchemaProvider>) -> Result<Self> {
        use arrow::array::AsArray;
        use sluice_engine::datafusion::execution::session_state::SessionState;
        let mut out = Self::default();
        let Some(state_ref) = state.as_any().downcast_ref::<SessionState>() else {
            return Ok(out);
        };
        let read = |name: &'static str| async move {
            let Some(table) = catalog.table(name).await? else {
                return Ok::<_, sluice_engine::datafusion::error::DataFusionError>(vec![]);
            };
            let plan = table.scan(state, None, &[], None).await?;
            sluice_engine::datafusion::physical_plan::collect(plan, state.task_ctx()).await
        };
        let as_i64 = |a: &arrow::array::ArrayRef| arrow::compute::cast(a, &DataType::Int64);
        let mut namespaces = std::collections::HashMap::new();
        for b in read("pg_namespace").await? {
            let (Some(oid), Some(name)) = (b.column_by_name("oid"), b.column_by_name("nspname")) else {
                continue;
            };
            let (oid, name) = (as_i64(oid)?, arrow::compute::cast(name, &DataType::Utf8)?);
            let (oid, name) = (
                oid.as_primitive::<arrow::datatypes::Int64Type>(),
                name.as_string::<i32>(),
            );
            for i in 0..b.num_rows() {
                if !oid.is_null(i) && !name.is_null(i) {
                    namespaces.insert(oid.value(i), name.value(i).to_string());
                }
            }
        }
        let default_catalog = state.config().options().catalog.default_catalog.clone();
        let Some(tables) = state_ref.catalog_list().catalog(&default_catalog) else {
            return Ok(out);
        };
        for b in read("pg_class").await? {
            let (Some(oid), Some(name), Some(ns)) = (
                b.column_by_name("oid"),
                b.column_by_name("relname"),
                b.column_by_name("relnamespace"),
            ) else {
                continue;
            };
            let (oid, ns) = (as_i64(oid)?, as_i64(ns)?);
            let name = arrow::compute::cast(name, &DataType::Utf8)?;
            let (oid, ns) = (
                oid.as_primitive::<arrow::datatypes::Int64Type>(),
                ns.as_primitive::<arrow::datatypes::Int64Type>(),
            );
            let name = name.as_string::<i32>();
            for i in 0..b.num_rows() {
                if oid.is_null(i) || name.is_null(i) || ns.is_null(i) {
                    continue;
                }
                let Some(schema) = namespaces.get(&ns.value(i)).and_then(|n| tables.schema(n)) else {
                    continue;
                };
                if let Ok(Some(table)) = schema.table(name.value(i)).await {
                    out.fields.insert(oid.value(i), table.schema());
                }
            }
        }
        Ok(out)
    }

    /// `batch` (pg_attribute rows) with each column the library typed
    /// `text` typed as what its field is.
    fn correct(&self, batch: RecordBatch) -> Result<RecordBatch> {
        use arrow::array::{AsArray, BooleanArray, Int16Array, Int32Array};
        let schema = batch.schema();
        let index = |n: &str| schema.index_of(n);
        let (Ok(rel), Ok(num), Ok(typ), Ok(len), Ok(byval), Ok(align), Ok(storage)) = (
            index("attrelid"),
            index("attnum"),
            index("atttypid"),
            index("attlen"),
            index("attbyval"),
            index("attalign"),
            index("attstorage"),
        ) else {
            return Ok(batch);
        };
        let rels = arrow::compute::cast(batch.column(rel), &DataType::Int64)?;
        let rels = rels.as_primitive::<arrow::datatypes::Int64Type>();
        let nums = arrow::compute::cast(batch.column(num), &DataType::Int64)?;
        let nums = nums.as_primitive::<arrow::datatypes::Int64Type>();
        let typ_in = arrow::compute::cast(batch.column(typ), &DataType::Int32)?;
        let typ_in = typ_in.as_primitive::<arrow::datatypes::Int32Type>();
        let mut typs: Vec<i32> = typ_in.values().to_vec();
        let lens_in = arrow::compute::cast(batch.column(len), &DataType::Int16)?;
        let mut lens: Vec<i16> = lens_in
            .as_primitive::<arrow::datatypes::Int16Type>()
            .values()
            .to_vec();
        let mut byvals: Vec<bool> = batch
            .column(byval)
            .as_boolean()
            .iter()
            .map(|b| b.unwrap_or(false))
            .collect();
        let text = |c: usize| -> Vec<String> {
            batch
                .column(c)
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect()
        };
        let (mut aligns, mut storages) = (text(align), text(storage));
        let mut changed = false;
        for i in 0..batch.num_rows() {
            if typs[i] != Type::TEXT.oid() as i32 || rels.is_null(i) || nums.is_null(i) {
                continue;
            }
            let Some(field) = self
                .fields
                .get(&rels.value(i))
                .and_then(|s| s.fields().get((nums.value(i) - 1).max(0) as usize))
            else {
                continue;
            };
            let Some((t, l, v, a, st)) = column_type(field) else {
                continue;
            };
            (typs[i], lens[i], byvals[i], aligns[i], storages[i]) =
                (t.oid() as i32, l, v, a.into(), st.into());
            changed = true;
        }
        if !changed {
            return Ok(batch);
        }
        let mut columns = batch.columns().to_vec();
        columns[typ] = arrow::compute::cast(&Int32Array::from(typs), schema.field(typ).data_type())?;
        columns[len] = Arc::new(Int16Array::from(lens));
        columns[byval] = Arc::new(BooleanArray::from(byvals));
        columns[align] = Arc::new(StringArray::from(aligns));
        columns[storage] = Arc::new(StringArray::from(storages));
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// A column's Postgres type with its length, pass-by-value, alignment and
/// storage as pg_attribute has them; None where arrow-pg knows no type.
fn column_type(field: &Field) -> Option<(Type, i16, bool, &'static str, &'static str)> {
    use sluice_engine::types::PgType;
    let t = match PgType::of_field(field) {
        Some(PgType::Json) => Type::JSON,
        Some(PgType::Jsonb) => Type::JSONB,
        Some(PgType::Uuid) => Type::UUID,
        None => arrow_pg::datatypes::into_pg_type(field.data_type()).ok()?,
    };
    Some(match t {
        Type::UUID => (t, 16, false, "c", "p"),
        Type::INTERVAL => (t, 16, false, "d", "p"),
        Type::TIMETZ => (t, 12, false, "d", "p"),
        Type::BOOL | Type::CHAR => (t, 1, true, "c", "p"),
        Type::INT2 => (t, 2, true, "s", "p"),
        Type::INT4 | Type::FLOAT4 | Type::DATE | Type::OID => (t, 4, true, "i", "p"),
        Type::INT8 | Type::FLOAT8 | Type::TIME | Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            (t, 8, true, "d", "p")
        }
        Type::NUMERIC => (t, -1, false, "i", "m"),
        _ => (t, -1, false, "i", "x"),
    })
}

/// Settings fixed when Postgres is built, as Postgres 15 reports them.
const FIXED_SETTINGS: [(&str, &str, &str); 6] = [
    ("max_index_keys", "32", "Shows the maximum number of index keys."),
    (
        "max_identifier_length",
        "63",
        "Shows the maximum identifier length.",
    ),
    (
        "max_function_args",
        "100",
        "Shows the maximum number of function arguments.",
    ),
    ("block_size", "8192", "Shows the size of a disk block."),
    (
        "integer_datetimes",
        "on",
        "Shows whether datetimes are integer based.",
    ),
    (
        "server_encoding",
        "UTF8",
        "Shows the server (database) character set encoding.",
    ),
];

/// The rows of [`FIXED_SETTINGS`] the library's `batches` lack.
/// pg_matviews' rows: each materialized view, its query as the definition
/// (as Postgres ends it, with a semicolon).
fn materialized_views(
    schema: &SchemaRef,
    objects: &[sluice_engine::catalog::CatalogEntry],
) -> Result<RecordBatch> {
    use sluice_engine::parser::Statement;
    let views: Vec<(String, String)> = objects
        .iter()
        .filter(|e| e.kind == sluice_engine::catalog::ObjectKind::MaterializedView)
        .filter_map(|e| {
            let definition = match sluice_engine::parser::parse(&e.sql).ok()?.pop()? {
                Statement::CreateMaterializedView(c) => format!(" {};", c.query),
                _ => return None,
            };
            Some((e.name.clone(), definition))
        })
        .collect();
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> arrow::array::ArrayRef {
            let text = |v: &(String, String)| match f.name().as_str() {
                "schemaname" => Some("public".to_string()),
                "matviewname" => Some(v.0.clone()),
                "matviewowner" => Some("postgres".to_string()),
                "definition" => Some(v.1.clone()),
                _ => None,
            };
            match (f.data_type(), f.name().as_str()) {
                (DataType::Utf8, _) => Arc::new(views.iter().map(text).collect::<StringArray>()),
                (DataType::Boolean, "ispopulated") => {
                    Arc::new(arrow::array::BooleanArray::from(vec![true; views.len()]))
                }
                (DataType::Boolean, _) => {
                    Arc::new(arrow::array::BooleanArray::from(vec![false; views.len()]))
                }
                (t, _) => arrow::array::new_null_array(t, views.len()),
            }
        })
        .collect();
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn fixed_settings(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    let have: HashSet<String> = batches
        .iter()
        .filter_map(|b| {
            b.column_by_name("name")?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
        })
        .flat_map(|a| a.iter().flatten().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let rows: Vec<_> = FIXED_SETTINGS
        .iter()
        .filter(|(n, _, _)| !have.contains(*n))
        .collect();
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> arrow::array::ArrayRef {
            let value = |r: &(&str, &str, &str)| match f.name().as_str() {
                "name" => Some(r.0.to_string()),
                "setting" | "reset_val" | "boot_val" => Some(r.1.to_string()),
                "short_desc" => Some(r.2.to_string()),
                "category" => Some("Preset Options".to_string()),
                "context" => Some("internal".to_string()),
                "source" => Some("default".to_string()),
                "vartype" => Some(
                    if r.1.parse::<i64>().is_ok() {
                        "integer"
                    } else {
                        "string"
                    }
                    .to_string(),
                ),
                _ => None,
            };
            match f.data_type() {
                DataType::Utf8 => Arc::new(rows.iter().map(|r| value(r)).collect::<StringArray>()),
                t => arrow::array::new_null_array(t, rows.len()),
            }
        })
        .collect();
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// An array column's element type.
#[derive(Debug, Clone, Copy)]
enum Elem {
    Int16,
    Int32,
    Text,
}

impl Elem {
    fn data_type(self) -> DataType {
        match self {
            Elem::Int16 => DataType::Int16,
            Elem::Int32 => DataType::Int32,
            Elem::Text => DataType::Utf8,
        }
    }
}

/// pg_proc's vector columns: the library keeps them as text (`2276 25`,
/// `[1034, 26]`, `['acl', 'grantor']`), which `proargtypes::regtype[]`
/// (pgcli's function list) cannot cast.
const PG_PROC_VECTORS: &[(&str, Elem)] = &[
    ("proargtypes", Elem::Int32),
    ("proallargtypes", Elem::Int32),
    ("proargnames", Elem::Text),
    ("proargmodes", Elem::Text),
    ("proacl", Elem::Text),
];

/// Access-control lists (`aclitem[]` in Postgres; NULL here: Sluice keeps no
/// grants per object), typed as arrays so that psql's `\dn+` and `\dp` can
/// `array_to_string` them.
const ACL_VECTORS: &[(&str, Elem)] = &[
    ("nspacl", Elem::Text),
    ("attacl", Elem::Text),
    ("typacl", Elem::Text),
];

/// pg_constraint's: pgjdbc's key metadata (`getImportedKeys`) indexes
/// `conkey[i]`.
const PG_CONSTRAINT_VECTORS: &[(&str, Elem)] = &[
    ("conkey", Elem::Int16),
    ("confkey", Elem::Int16),
    ("conpfeqop", Elem::Int32),
    ("conppeqop", Elem::Int32),
    ("conffeqop", Elem::Int32),
    ("confdelsetcols", Elem::Int16),
    ("conexclop", Elem::Int32),
];

fn vectors_schema(library: &Schema, vectors: &[(&str, Elem)]) -> SchemaRef {
    let fields: Vec<Field> = library
        .fields()
        .iter()
        .map(|f| match vectors.iter().find(|(n, _)| n == f.name()) {
            Some((_, t)) if f.data_type() == &DataType::Utf8 => Field::new(
                f.name(),
                DataType::List(Arc::new(Field::new("item", t.data_type(), true))),
                f.is_nullable() || f.name() != "proargtypes",
            ),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, library.metadata().clone()))
}

/// The text vectors of `batch` parsed into the lists of `schema`: numbers
/// for oid vectors, quoted strings for name and mode arrays. An empty text
/// is an empty `proargtypes` and NULL elsewhere, as Postgres has them.
fn typed_vectors(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    use arrow::array::{Int32Builder, ListBuilder, StringBuilder};
    let mut columns = batch.columns().to_vec();
    for (i, field) in schema.fields().iter().enumerate() {
        let Some(text) = columns[i].as_any().downcast_ref::<StringArray>() else {
            continue;
        };
        let DataType::List(item) = field.data_type() else {
            continue;
        };
        let empty_is_null = field.name() != "proargtypes";
        let column: arrow::array::ArrayRef = if item.data_type() != &DataType::Utf8 {
            let int32 = Arc::new(Field::new("item", DataType::Int32, true));
            let mut b = ListBuilder::new(Int32Builder::new()).with_field(int32);
            for v in text.iter() {
                match v.map(str::trim) {
                    Some(t) if !(t.is_empty() && empty_is_null) => {
                        for n in t.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty()) {
                            b.values().append_option(n.parse::<i32>().ok());
                        }
                        b.append(true);
                    }
                    _ => b.append(false),
                }
            }
            arrow::compute::cast(&b.finish(), field.data_type())?
        } else {
            let mut b = ListBuilder::new(StringBuilder::new()).with_field(item.clone());
            for v in text.iter() {
                match v.map(str::trim) {
                    Some(t) if !t.is_empty() => {
                        for s in t.split('\'').skip(1).step_by(2) {
                            b.values().append_value(s);
                        }
                        b.append(true);
                    }
                    _ => b.append(false),
                }
            }
            Arc::new(b.finish())
        };
        columns[i] = column;
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The text-array columns of Postgres' `pg_class` the library leaves out.
const PG_CLASS_MISSING: [&str; 2] = ["relacl", "reloptions"];

fn pg_class_schema(library: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = library.fields().iter().map(|f| f.as_ref().clone()).collect();
    for name in PG_CLASS_MISSING {
        if library.index_of(name).is_err() {
            let text = Arc::new(Field::new("item", DataType::Utf8, true));
            fields.push(Field::new(name, DataType::List(text), true));
        }
    }
    Arc::new(Schema::new_with_metadata(fields, library.metadata().clone()))
}

/// `batch` with its Int32 column `column` set from its text column `key`.
fn set_int32_by_name(
    batch: RecordBatch,
    column: &str,
    key: &str,
    value: impl Fn(&str) -> i32,
) -> Result<RecordBatch> {
    let schema = batch.schema();
    let (Ok(target), Some(keys)) = (
        schema.index_of(column),
        batch
            .column_by_name(key)
            .and_then(|k| arrow::compute::cast(k, &DataType::Utf8).ok()),
    ) else {
        return Ok(batch);
    };
    if schema.field(target).data_type() != &DataType::Int32 {
        return Ok(batch);
    }
    let keys = keys
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .unwrap_or_else(|| StringArray::from(Vec::<&str>::new()));
    let values: arrow::array::Int32Array = keys.iter().map(|k| k.map(&value)).collect();
    let mut columns = batch.columns().to_vec();
    columns[target] = Arc::new(values);
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `batch` with the columns `schema` adds to it, all NULL.
fn complete_pg_class(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    for f in schema.fields().iter().skip(columns.len()) {
        columns.push(arrow::array::new_null_array(f.data_type(), batch.num_rows()));
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn mark_materialized_views(batch: RecordBatch, views: &HashSet<String>) -> Result<RecordBatch> {
    let schema = batch.schema();
    let (Ok(name), Ok(kind)) = (schema.index_of("relname"), schema.index_of("relkind")) else {
        return Ok(batch);
    };
    let (Some(names), Some(kinds)) = (
        batch.column(name).as_any().downcast_ref::<StringArray>(),
        batch.column(kind).as_any().downcast_ref::<StringArray>(),
    ) else {
        return Ok(batch);
    };
    let marked: StringArray = (0..batch.num_rows())
        .map(|i| {
            if kinds.is_null(i) {
                None
            } else if views.contains(names.value(i)) {
                Some("m")
            } else {
                Some(kinds.value(i))
            }
        })
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[kind] = Arc::new(marked);
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `format_types(oids)`: the type names of an array of type oids, as
/// `oids::regtype[]::text` gives them in Postgres (see
/// `sluice_engine::parser`'s `regtype_names`). Each name comes from the
/// library's `format_type`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FormatTypes {
    signature: Signature,
}

impl FormatTypes {
    fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            signature: Signature::any(1, Volatility::Stable),
        })
    }
}

impl ScalarUDFImpl for FormatTypes {
    fn name(&self) -> &str {
        "format_types"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::array::{AsArray, ListArray};
        let rows = args.number_rows;
        let list = args.args[0].to_array(rows)?;
        let list = arrow::compute::cast(
            &list,
            &DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
        )?;
        let list = list.as_list::<i32>();
        let oids = list.values().clone();
        let format_type = datafusion_pg_catalog::pg_catalog::format_type::create_format_type_udf();
        let n = oids.len();
        let names = format_type.invoke_with_args(ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(oids),
                ColumnarValue::Scalar(sluice_engine::datafusion::common::ScalarValue::Int32(None)),
            ],
            arg_fields: vec![
                Arc::new(Field::new("oid", DataType::Int32, true)),
                Arc::new(Field::new("typmod", DataType::Int32, true)),
            ],
            number_rows: n,
            return_field: Arc::new(Field::new("name", DataType::Utf8, true)),
            config_options: args.config_options.clone(),
        })?;
        let names = arrow::compute::cast(&names.to_array(n)?, &DataType::Utf8)?;
        let out = ListArray::try_new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            list.offsets().clone(),
            names,
            list.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
