//! [`KeyedRows`]: a multiset of rows per key, in Arrow's row format.

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::DataFusionError;
use indexmap::IndexMap;
use indexmap::map::RawEntryApiV1;
use indexmap::map::raw_entry_v1::RawEntryMut;

/// The hasher of keys and rows held: seeded per process like the
/// standard library's, and several times faster on short byte strings
/// (SipHash took 3% of an interval join's time, hashing each key twice).
type Hasher = foldhash::fast::RandomState;

/// A key or row held. (Shared with the expiry list through `Arc` instead,
/// regular joins' rows cost 16 bytes more each and nothing measured
/// faster: q20's peak memory grew 7%.)
type Bytes = Box<[u8]>;

use super::Result;

/// One row held by a [`KeyedRows`] table: the row in Arrow's row format,
/// how many times it is held, and a counter its operator keeps beside it
/// (a join: how many rows of the other input it matches).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub row: &'a [u8],
    pub count: i64,
    pub matches: i64,
}

/// The rows held under one key, in the order they came (a removed row's
/// place is taken by the last one), found by their bytes in O(1): a key
/// holding many rows (one auction, a million bids) costs no scan per row.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    rows: IndexMap<Bytes, (i64, i64), Hasher>,
    /// Changed since the last full snapshot.
    changed: bool,
    /// Held at the last full snapshot (else new since: when it goes away
    /// again, an incremental snapshot need not say so).
    in_base: bool,
}

impl Bucket {
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The `at`-th row.
    pub(crate) fn at(&self, at: usize) -> Entry<'_> {
        let (row, (count, matches)) = self.rows.get_index(at).expect("a row of the bucket");
        Entry {
            row,
            count: *count,
            matches: *matches,
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        self.rows.iter().map(|(row, (count, matches))| Entry {
            row,
            count: *count,
            matches: *matches,
        })
    }
}

/// A held row by its key's bytes and its own.
type HeldRow = (Bytes, Bytes);

/// A row dropped by [`KeyedRows::take_before`].
#[derive(Debug)]
pub(crate) struct Taken {
    /// The time it was given ([`KeyedRows::add_expiring`]).
    pub time: i64,
    pub key: Bytes,
    pub row: Bytes,
    pub count: i64,
    pub matches: i64,
}

/// A multiset of rows per key. Keys and rows are held in Arrow's row
/// format (compact, hashable, comparable bytes) and turned back into
/// columns of the declared schema when read.
pub(crate) struct KeyedRows {
    schema: SchemaRef,
    keys: RowConverter,
    rows: RowConverter,
    buckets: HashMap<Bytes, Bucket, Hasher>,
    empty: Bucket,
    /// Keys of the last full snapshot whose bucket went away since (none
    /// of them is in `buckets`). With the buckets marked changed, the keys
    /// changed since then; a flag per bucket costs no lookup per row added
    /// (a set of changed keys took a tenth of an interval join's time).
    removed: HashSet<Bytes, Hasher>,
    /// How many keys changed since the last full snapshot.
    changed: usize,
    held: usize,
    bytes: usize,
    /// Rows to drop once time passes their time: (key, row) by time.
    expiry: BTreeMap<i64, Vec<HeldRow>>,
    expiry_bytes: usize,
}

/// Rows of a snapshot of a [`KeyedRows`], as columns: the key columns,
/// the row's columns, `count` and `matches`. A row with `count` 0 (its
/// row columns NULL) says its key held nothing at that point: restoring
/// an incremental snapshot clears the key before its rows are added.
pub(crate) struct RowsSnapshot {
    pub keys: Vec<ArrayRef>,
    pub rows: Vec<ArrayRef>,
    pub count: Int64Array,
    pub matches: Int64Array,
}

impl RowsSnapshot {
    pub(crate) fn len(&self) -> usize {
        self.count.len()
    }
}

/// Bytes a held row costs beyond its own: its counters and the index's
/// slot.
const ENTRY_OVERHEAD: usize = 2 * std::mem::size_of::<i64>() + 3 * std::mem::size_of::<usize>();
const BUCKET_OVERHEAD: usize = std::mem::size_of::<Bucket>();
/// Bytes an expiry entry costs beyond its key and row: two boxed slices
/// and the time's slot.
const EXPIRY_OVERHEAD: usize = 4 * std::mem::size_of::<usize>() + std::mem::size_of::<i64>();

/// Arrow's row format for whole rows of `schema` (held rows: compact,
/// hashable bytes, turned back into columns when read).
pub(crate) fn row_converter(schema: &arrow::datatypes::Schema) -> Result<RowConverter> {
    Ok(RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?)
}

impl KeyedRows {
    /// A table of rows of `schema` keyed by values of `key_types`.
    pub(crate) fn new(key_types: &[DataType], schema: SchemaRef) -> Result<Self> {
        let keys = RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())?;
        let rows = row_converter(&schema)?;
        Ok(Self {
            schema,
            keys,
            rows,
            buckets: HashMap::default(),
            empty: Bucket::default(),
            removed: HashSet::default(),
            changed: 0,
            held: 0,
            bytes: 0,
            expiry: BTreeMap::new(),
            expiry_bytes: 0,
        })
    }

    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Key columns in the table's key encoding.
    pub(crate) fn encode_keys(&self, columns: &[ArrayRef]) -> Result<Rows> {
        Ok(self.keys.convert_columns(columns)?)
    }

    /// Row columns (of the declared schema) in the table's row encoding.
    pub(crate) fn encode_rows(&self, columns: &[ArrayRef]) -> Result<Rows> {
        Ok(self.rows.convert_columns(columns)?)
    }

    /// The rows held under `key` (none: empty).
    pub(crate) fn bucket(&self, key: &[u8]) -> &Bucket {
        self.buckets.get(key).unwrap_or(&self.empty)
    }

    /// How many times `row` is held under `key`.
    pub(crate) fn count_of(&self, key: &[u8], row: &[u8]) -> i64 {
        self.bucket(key).rows.get(row).map_or(0, |(count, _)| *count)
    }

    /// Adds `delta` to the count of `row` under `key` (a new row starts
    /// with `matches`); a row whose count reaches 0 is dropped. False when
    /// the count would go below 0 (the row is not held that often):
    /// nothing changes.
    pub(crate) fn add(&mut self, key: &[u8], row: &[u8], delta: i64, matches: i64) -> bool {
        self.change(key, row, delta, matches).is_some()
    }

    /// [`Self::add`], and a row not held before is dropped once
    /// [`Self::expire_before`] passes `expire` (one lookup where finding
    /// whether it is held, giving it its time and adding it were three).
    pub(crate) fn add_expiring(
        &mut self,
        key: &[u8],
        row: &[u8],
        delta: i64,
        matches: i64,
        expire: Option<i64>,
    ) -> bool {
        match self.change(key, row, delta, matches) {
            Some(true) => {
                if let Some(t) = expire {
                    self.expire_held((key.into(), row.into()), t);
                }
                true
            }
            Some(false) => true,
            None => false,
        }
    }

    /// [`Self::add`]: None when refused, else whether the row is new.
    fn change(&mut self, key: &[u8], row: &[u8], delta: i64, matches: i64) -> Option<bool> {
        if delta == 0 {
            return Some(false);
        }
        let bucket = match self.buckets.get_mut(key) {
            Some(b) => b,
            None if delta < 0 => return None,
            None => {
                self.bytes += key.len() + BUCKET_OVERHEAD;
                // Changed now; counted already if it went away before.
                let in_base = !self.removed.is_empty() && self.removed.remove(key);
                if !in_base {
                    self.changed += 1;
                }
                self.buckets.entry(key.into()).or_insert_with(|| Bucket {
                    rows: IndexMap::default(),
                    changed: true,
                    in_base,
                })
            }
        };
        // One hash and probe for the row, whether it is found or added.
        let new = match bucket.rows.raw_entry_mut_v1().from_key(row) {
            RawEntryMut::Occupied(mut e) => {
                let (count, _) = e.get_mut();
                if *count + delta < 0 {
                    return None;
                }
                *count += delta;
                if *count == 0 {
                    e.swap_remove();
                    self.held -= 1;
                    self.bytes -= row.len() + ENTRY_OVERHEAD;
                }
                false
            }
            RawEntryMut::Vacant(_) if delta < 0 => return None,
            RawEntryMut::Vacant(e) => {
                e.insert(row.into(), (delta, matches));
                self.held += 1;
                self.bytes += row.len() + ENTRY_OVERHEAD;
                true
            }
        };
        if !bucket.changed {
            bucket.changed = true;
            self.changed += 1;
        }
        if bucket.len() == 0 {
            self.drop_bucket(key);
        }
        Some(new)
    }

    /// Removes `key`'s empty bucket: remembered as changed when the last
    /// full snapshot held it, else forgotten.
    fn drop_bucket(&mut self, key: &[u8]) {
        if let Some((key, bucket)) = self.buckets.remove_entry(key) {
            self.bytes -= key.len() + BUCKET_OVERHEAD;
            match (bucket.in_base, bucket.changed) {
                (true, true) => {
                    self.removed.insert(key);
                }
                (true, false) => {
                    self.changed += 1;
                    self.removed.insert(key);
                }
                (false, true) => self.changed -= 1,
                (false, false) => {}
            }
        }
    }

    /// Drops every copy of `row` under `key`; returns its count and match
    /// counter (one lookup of each, where `add` after `count_of` is two).
    fn remove_row(&mut self, key: &[u8], row: &[u8]) -> Option<(i64, i64)> {
        let bucket = self.buckets.get_mut(key)?;
        let (count, matches) = bucket.rows.swap_remove(row)?;
        self.held -= 1;
        self.bytes -= row.len() + ENTRY_OVERHEAD;
        if !bucket.changed {
            bucket.changed = true;
            self.changed += 1;
        }
        if bucket.len() == 0 {
            self.drop_bucket(key);
        }
        Some((count, matches))
    }

    /// Adds `delta` to the match counter of the `at`-th row under `key`;
    /// returns the counter before and after.
    pub(crate) fn add_matches(&mut self, key: &[u8], at: usize, delta: i64) -> Option<(i64, i64)> {
        let bucket = self.buckets.get_mut(key)?;
        let (_, (_, matches)) = bucket.rows.get_index_mut(at)?;
        let before = *matches;
        *matches += delta;
        let after = *matches;
        if !bucket.changed {
            bucket.changed = true;
            self.changed += 1;
        }
        Some((before, after))
    }

    /// Rows (in the row encoding) back as columns of the declared schema.
    pub(crate) fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let parser = self.rows.parser();
        Ok(self
            .rows
            .convert_rows(rows.into_iter().map(|r| parser.parse(r)))?)
    }

    /// (distinct rows held, bytes held).
    pub(crate) fn size(&self) -> (usize, usize) {
        (
            self.held,
            self.bytes + self.expiry_bytes + self.keys.size() + self.rows.size(),
        )
    }

    /// Drops a held row (every copy of it) once [`Self::expire_before`]
    /// passes `time`.
    fn expire_held(&mut self, held: HeldRow, time: i64) {
        self.expiry_bytes += held.0.len() + held.1.len() + EXPIRY_OVERHEAD;
        self.expiry.entry(time).or_default().push(held);
    }

    /// Drops the rows whose time (see [`Self::add_expiring`]) is before
    /// `time`; `gone` sees each dropped row with its count and match
    /// counter. Returns how many rows went (copies counted).
    pub(crate) fn expire_before(&mut self, time: i64, mut gone: impl FnMut(&[u8], i64, i64)) -> u64 {
        self.take_before(time, |e| gone(&e.row, e.count, e.matches))
    }

    /// As [`Self::expire_before`], in time order, each dropped row with its
    /// key and the time it was given.
    pub(crate) fn take_before(&mut self, time: i64, mut gone: impl FnMut(Taken)) -> u64 {
        let mut dropped = 0u64;
        while let Some(entry) = self.expiry.first_entry() {
            let at = *entry.key();
            if at >= time {
                break;
            }
            for (key, row) in entry.remove() {
                self.expiry_bytes -= key.len() + row.len() + EXPIRY_OVERHEAD;
                let Some((count, matches)) = self.remove_row(&key, &row) else {
                    continue;
                };
                dropped += count as u64;
                gone(Taken {
                    time: at,
                    key,
                    row,
                    count,
                    matches,
                });
            }
        }
        dropped
    }

    /// Forgets every row's time; returns every held row (to be given one
    /// again).
    fn clear_expiry(&mut self) -> Vec<HeldRow> {
        self.expiry.clear();
        self.expiry_bytes = 0;
        self.buckets
            .iter()
            .flat_map(|(k, b)| b.rows.keys().map(move |r| (k.clone(), r.clone())))
            .collect()
    }

    /// Gives every held row the time `time` (after a restore, where the
    /// rows' time does not depend on them: a TTL from now).
    pub(crate) fn expire_all_at(&mut self, time: i64) {
        let held = self.clear_expiry();
        for held in held {
            self.expire_held(held, time);
        }
    }

    /// Registers every held row's time again (after a restore): `time_of`
    /// gets held rows as columns of the declared schema and returns each
    /// one's time (None: never dropped).
    pub(crate) fn rebuild_expiry(
        &mut self,
        mut time_of: impl FnMut(&[ArrayRef]) -> Result<Vec<Option<i64>>>,
    ) -> Result<()> {
        let held = self.clear_expiry();
        for chunk in held.chunks(8192) {
            let cols = self.decode(chunk.iter().map(|(_, r)| &**r))?;
            let times = time_of(&cols)?;
            for (held, time) in chunk.iter().zip(times) {
                if let Some(t) = time {
                    self.expire_held(held.clone(), t);
                }
            }
        }
        Ok(())
    }

    /// The keys whose rows `pick` picks (a restore rebuilding an index).
    pub(crate) fn keys_where(&self, mut pick: impl FnMut(&Bucket) -> bool) -> Vec<Box<[u8]>> {
        self.buckets
            .iter()
            .filter(|(_, b)| pick(b))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keys held.
    pub(crate) fn keys_held(&self) -> usize {
        self.buckets.len()
    }

    /// Keys changed since the last full snapshot.
    pub(crate) fn keys_changed(&self) -> usize {
        self.changed
    }

    /// Forgets what changed (after a full snapshot or a restore).
    fn unchanged(&mut self) {
        self.removed.clear();
        self.changed = 0;
        for b in self.buckets.values_mut() {
            b.changed = false;
            b.in_base = true;
        }
    }

    /// Every row held; nothing has changed since.
    pub(crate) fn snapshot(&mut self) -> Result<RowsSnapshot> {
        self.unchanged();
        let keys: Vec<&[u8]> = self.buckets.keys().map(|k| &**k).collect();
        self.snapshot_of(&keys, false)
    }

    /// The keys changed since the last full snapshot: each one's marker
    /// (count 0) first, then the rows it holds now.
    pub(crate) fn snapshot_changes(&self) -> Result<RowsSnapshot> {
        let mut keys: Vec<&[u8]> = self
            .buckets
            .iter()
            .filter(|(_, b)| b.changed)
            .map(|(k, _)| &**k)
            .chain(self.removed.iter().map(|k| &**k))
            .collect();
        keys.sort_unstable();
        self.snapshot_of(&keys, true)
    }

    fn snapshot_of(&self, keys: &[&[u8]], markers: bool) -> Result<RowsSnapshot> {
        let mut key_rows: Vec<&[u8]> = Vec::new();
        let mut rows: Vec<&[u8]> = Vec::new();
        let mut count = Vec::new();
        let mut matches = Vec::new();
        let marked = if markers { keys.len() } else { 0 };
        if markers {
            key_rows.extend_from_slice(keys);
            count.resize(keys.len(), 0);
            matches.resize(keys.len(), 0);
        }
        for k in keys {
            for e in self.bucket(k).iter() {
                key_rows.push(k);
                rows.push(e.row);
                count.push(e.count);
                matches.push(e.matches);
            }
        }
        let key_parser = self.keys.parser();
        let key_cols = self
            .keys
            .convert_rows(key_rows.iter().map(|k| key_parser.parse(k)))?;
        let mut row_cols = self.decode(rows)?;
        if marked > 0 {
            row_cols = row_cols
                .iter()
                .map(|c| {
                    let nulls = arrow::array::new_null_array(c.data_type(), marked);
                    Ok(arrow::compute::concat(&[nulls.as_ref(), c.as_ref()])?)
                })
                .collect::<Result<_>>()?;
        }
        Ok(RowsSnapshot {
            keys: key_cols,
            rows: row_cols,
            count: Int64Array::from(count),
            matches: Int64Array::from(matches),
        })
    }

    /// Takes back snapshot rows (a full snapshot's, then the changes after
    /// it, in order). Restored rows count as unchanged.
    pub(crate) fn restore(&mut self, snap: &RowsSnapshot) -> Result<()> {
        let keys = self.encode_keys(&snap.keys)?;
        let rows = self.encode_rows(&snap.rows)?;
        for i in 0..snap.len() {
            let key = keys.row(i);
            let count = snap.count.value(i);
            if count == 0 {
                if let Some(gone) = self.buckets.remove(key.data()) {
                    self.held -= gone.len();
                    self.bytes -= key.data().len() + BUCKET_OVERHEAD;
                    self.bytes -= gone.iter().map(|e| e.row.len() + ENTRY_OVERHEAD).sum::<usize>();
                }
                continue;
            }
            if !self.add(key.data(), rows.row(i).data(), count, snap.matches.value(i)) {
                return Err(DataFusionError::Internal(
                    "a snapshot row with a negative count".into(),
                ));
            }
        }
        self.unchanged();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_rows_count_a_multiset_and_account_for_what_they_hold() {
        use std::sync::Arc;

        use arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, true)]));
        let mut t = KeyedRows::new(&[DataType::Int64], schema).unwrap();
        let empty = t.size().1;
        let keys = t
            .encode_keys(&[Arc::new(Int64Array::from(vec![1, 1, 2])) as ArrayRef])
            .unwrap();
        let rows = t
            .encode_rows(&[Arc::new(arrow::array::StringArray::from(vec!["a", "b", "a"])) as ArrayRef])
            .unwrap();
        let k = |i: usize| keys.row(i).data().to_vec();
        let r = |i: usize| rows.row(i).data().to_vec();
        for i in [0, 1, 0, 2] {
            let (key, row) = (k(i), r(i));
            assert!(t.add(&key, &row, 1, 0));
        }
        assert_eq!(t.size().0, 3);
        assert_eq!(t.count_of(&k(0), &r(0)), 2);
        assert!(t.size().1 > empty);
        // Deleting more than is held changes nothing.
        assert!(!t.add(&k(1), &r(1), -2, 0));
        assert!(!t.add(&k(2), &r(1), -1, 0));
        assert_eq!(t.add_matches(&k(1), 0, 3), Some((0, 3)));
        let snap = t.snapshot().unwrap();
        assert_eq!((snap.len(), t.keys_changed()), (3, 0));
        for (i, n) in [(0, -2), (1, -1), (2, -1)] {
            let (key, row) = (k(i), r(i));
            assert!(t.add(&key, &row, n, 0));
        }
        assert_eq!((t.size(), t.keys_held(), t.keys_changed()), ((0, empty), 0, 2));
        // The changes: both keys emptied, markers only.
        let changes = t.snapshot_changes().unwrap();
        assert_eq!(changes.count.values().to_vec(), vec![0, 0]);
        let mut back = KeyedRows::new(&[DataType::Int64], t.schema().clone()).unwrap();
        back.restore(&snap).unwrap();
        assert_eq!(back.bucket(&k(1)).at(0).matches, 3);
        back.restore(&changes).unwrap();
        assert_eq!((back.size(), back.keys_held()), ((0, empty), 0));
    }

    #[test]
    fn expired_rows_go_with_every_copy_and_come_back_indexed_after_a_restore() {
        use std::sync::Arc;

        use arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("t", DataType::Int64, true)]));
        let mut t = KeyedRows::new(&[DataType::Int64], schema.clone()).unwrap();
        let empty = t.size().1;
        let col = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
        let keys = t.encode_keys(&[col(vec![1, 1, 2])]).unwrap();
        let rows = t.encode_rows(&[col(vec![10, 20, 10])]).unwrap();
        // Row i is held until its own value (a time).
        for (i, copies) in [(0, 2), (1, 1), (2, 1)] {
            let (key, row) = (keys.row(i).data(), rows.row(i).data());
            assert!(t.add_expiring(key, row, copies, 0, Some([10, 20, 10][i])));
        }
        let snap = t.snapshot().unwrap();
        // Nothing is before 10; both rows at 10 (one held twice) are.
        assert_eq!(t.expire_before(10, |_, _, _| {}), 0);
        let mut seen = vec![];
        assert_eq!(
            t.expire_before(11, |_, count, matches| seen.push((count, matches))),
            3
        );
        seen.sort();
        assert_eq!(seen, [(1, 0), (2, 0)]);
        assert_eq!((t.size().0, t.keys_held(), t.keys_changed()), (1, 1, 2));
        assert_eq!(t.expire_before(i64::MAX, |_, _, _| {}), 1);
        assert_eq!(t.size(), (0, empty));
        // A restore holds the rows again; the index is rebuilt from them.
        let mut back = KeyedRows::new(&[DataType::Int64], schema).unwrap();
        back.restore(&snap).unwrap();
        back.rebuild_expiry(|cols| {
            let v = cols[0].as_any().downcast_ref::<Int64Array>().unwrap();
            Ok(v.iter().collect())
        })
        .unwrap();
        assert_eq!(back.expire_before(15, |_, _, _| {}), 3);
        assert_eq!(back.size().0, 1);
    }

    /// Random adds and removals with full snapshots now and then: the base
    /// plus the changes restores what is held, the changes name exactly
    /// the keys that changed, and a key that came and went since the base
    /// is not among them.
    #[test]
    fn changes_since_the_base_restore_what_is_held() {
        use std::sync::Arc;

        use arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let mut t = KeyedRows::new(&[DataType::Int64], schema.clone()).unwrap();
        let col = |v: Vec<i64>| Arc::new(Int64Array::from(v)) as ArrayRef;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let held = |t: &KeyedRows| {
            let mut all: Vec<(Vec<u8>, Vec<u8>, i64, i64)> = t
                .buckets
                .iter()
                .flat_map(|(k, b)| b.iter().map(|e| (k.to_vec(), e.row.to_vec(), e.count, e.matches)))
                .collect();
            all.sort();
            all
        };
        let keys_of = |t: &KeyedRows| -> std::collections::BTreeSet<Vec<u8>> {
            t.buckets.keys().map(|k| k.to_vec()).collect()
        };
        let mut base = t.snapshot().unwrap();
        let mut base_keys = keys_of(&t);
        let mut touched = std::collections::BTreeSet::new();
        for round in 0..60 {
            for _ in 0..30 {
                let (k, v) = (next(12) as i64, next(3) as i64);
                let key = t.encode_keys(&[col(vec![k])]).unwrap();
                let row = t.encode_rows(&[col(vec![v])]).unwrap();
                let (key, row) = (key.row(0).data().to_vec(), row.row(0).data().to_vec());
                let delta = if next(2) == 0 { 1 } else { -1 };
                if t.add(&key, &row, delta, 0) {
                    touched.insert(key);
                }
            }
            // What changed: touched keys held at the base or held now.
            let now = keys_of(&t);
            let want = touched
                .iter()
                .filter(|k| base_keys.contains(*k) || now.contains(*k))
                .count();
            assert_eq!(t.keys_changed(), want, "round {round}");
            let changes = t.snapshot_changes().unwrap();
            let mut back = KeyedRows::new(&[DataType::Int64], schema.clone()).unwrap();
            back.restore(&base).unwrap();
            back.restore(&changes).unwrap();
            assert_eq!(held(&back), held(&t), "round {round}");
            assert_eq!((back.size(), back.keys_held()), (t.size(), t.keys_held()));
            // Changes accumulate until the next full snapshot, as between
            // checkpoints.
            if next(3) == 0 {
                base = t.snapshot().unwrap();
                base_keys = now;
                touched.clear();
                assert_eq!(t.keys_changed(), 0);
            }
        }
    }
}
