//! One SQL surface over both backends, so that each part of the store is written once.
//!
//! Statements are written in the common subset of SQLite's and PostgreSQL's SQL, with
//! PostgreSQL's placeholders (`$1`, `$2`, ...; SQLite gets them as `?1`, `?2`). Values are the
//! four kinds both databases share ([`Value`]); a row is read back as those, whatever integer or
//! text type a column has on either side. Where the dialects differ the statement uses what
//! both accept: `ON CONFLICT ... DO UPDATE` rather than `INSERT OR REPLACE`, `RETURNING` rather
//! than `last_insert_rowid()`, `CAST(... AS BIGINT)` around aggregates (PostgreSQL's `SUM` of
//! a `BIGINT` is a `NUMERIC`), `CAST($1 AS TEXT) IS NULL` where a placeholder's type shows only
//! from its use (PostgreSQL must know every parameter's type).

use std::error::Error as StdError;

use bytes::BytesMut;
use postgres::types::{FromSql, IsNull, ToSql, Type};

use crate::StoreError;

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Int(i64::from(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Self::Bytes(v.to_vec())
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Self::Bytes(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// The values of a statement's placeholders, in order: `vals![a, b]`.
macro_rules! vals {
    ($($v:expr),* $(,)?) => {
        [$($crate::sql::Value::from($v)),*]
    };
}
pub(crate) use vals;

/// One row of a result.
#[derive(Debug)]
pub(crate) struct Row(Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value, StoreError> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("a row has no column {i}")))
    }

    /// Column `i` as an integer.
    pub(crate) fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            other => Err(StoreError::Corrupt(format!(
                "column {i} is {other:?}, not an integer"
            ))),
        }
    }

    /// Column `i` as an integer, or `None` where it is NULL.
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    /// Column `i` as text.
    pub(crate) fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.at(i)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(StoreError::Corrupt(format!(
                "column {i} is {other:?}, not text"
            ))),
        }
    }

    /// Column `i` as text, or `None` where it is NULL.
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    /// Column `i` as bytes.
    pub(crate) fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        match self.at(i)? {
            Value::Bytes(v) => Ok(v.clone()),
            other => Err(StoreError::Corrupt(format!(
                "column {i} is {other:?}, not bytes"
            ))),
        }
    }
}

/// Which database a statement goes to, where their layouts differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// What runs statements: a connection or a transaction of either backend.
pub(crate) trait Sql {
    /// Which database this is.
    fn dialect(&self) -> Dialect;

    /// Runs a statement; how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;

    /// Runs a query; its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;

    /// Serializes the rest of the transaction with every other one that names `lock` (a
    /// PostgreSQL advisory lock; SQLite has one writer already).
    fn serialize(&mut self, lock: &str) -> Result<(), StoreError>;

    /// What a `SELECT` that claims rows ends with, so that concurrent claimers skip each other's
    /// rows rather than wait or take them twice (empty on SQLite, where a writer is alone).
    fn skip_locked(&self) -> &'static str;

    /// Tells every node that what is cached in `scope` changed (see [`crate::cache`]): at
    /// commit on PostgreSQL, nothing on SQLite (a single node caches nothing).
    fn notify(&mut self, scope: &str) -> Result<(), StoreError>;

    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first row of a query that always returns one (an aggregate, say).
    fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?
            .ok_or_else(|| StoreError::Corrupt(format!("no row from {sql}")))
    }
}

/// `$N` placeholders as SQLite's `?N`. Statements are the store's own, and none has a `$` in
/// a string literal.
pub(crate) fn sqlite_placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

/// A SQLite connection (or a transaction, through `Deref`) as [`Sql`].
pub(crate) struct Lite<'a>(pub(crate) &'a rusqlite::Connection);

impl Sql for Lite<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.0.prepare_cached(&sqlite_placeholders(sql))?;
        let n = stmt.execute(rusqlite::params_from_iter(params.iter()))?;
        Ok(u64::try_from(n).unwrap_or(u64::MAX))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.0.prepare_cached(&sqlite_placeholders(sql))?;
        let columns = stmt.column_count();
        let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
            (0..columns)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => Value::Null,
                        rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                        // No column of the store is a float; one read as such is stored by
                        // something else.
                        rusqlite::types::ValueRef::Real(v) => Value::Text(v.to_string()),
                        rusqlite::types::ValueRef::Text(v) => {
                            Value::Text(String::from_utf8_lossy(v).into_owned())
                        }
                        rusqlite::types::ValueRef::Blob(v) => Value::Bytes(v.to_vec()),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Row)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn serialize(&mut self, _lock: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn notify(&mut self, _scope: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn skip_locked(&self) -> &'static str {
        ""
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Bytes(v) => ValueRef::Blob(v),
        }))
    }
}

fn pg_failed(doing: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { doing, source }
}

fn pg_params(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn pg_rows(rows: Vec<postgres::Row>) -> Result<Vec<Row>, StoreError> {
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.try_get::<_, Value>(i)
                        .map_err(|source| StoreError::Postgres {
                            doing: "reading a row",
                            source,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Row)
        })
        .collect()
}

/// A PostgreSQL client or transaction as [`Sql`], with the scopes it notified (for the
/// writing node to drop from its own cache once they are committed).
pub(crate) struct Pg<'a, C: postgres::GenericClient> {
    client: &'a mut C,
    pub(crate) notified: Vec<String>,
    /// Statements sent to the server.
    pub(crate) statements: u64,
}

impl<'a, C: postgres::GenericClient> Pg<'a, C> {
    pub(crate) fn new(client: &'a mut C) -> Self {
        Self {
            client,
            notified: Vec::new(),
            statements: 0,
        }
    }
}

impl<C: postgres::GenericClient> Sql for Pg<'_, C> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        self.statements += 1;
        self.client
            .execute(sql, &pg_params(params))
            .map_err(pg_failed("writing"))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        self.statements += 1;
        pg_rows(
            self.client
                .query(sql, &pg_params(params))
                .map_err(pg_failed("reading"))?,
        )
    }

    fn serialize(&mut self, lock: &str) -> Result<(), StoreError> {
        self.statements += 1;
        self.client
            .execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock])
            .map_err(pg_failed("taking a lock"))?;
        Ok(())
    }

    fn notify(&mut self, scope: &str) -> Result<(), StoreError> {
        self.statements += 1;
        self.client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&crate::cache::CHANNEL, &scope],
            )
            .map_err(pg_failed("notifying"))?;
        self.notified.push(scope.to_owned());
        Ok(())
    }

    fn skip_locked(&self) -> &'static str {
        " FOR UPDATE SKIP LOCKED"
    }
}

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => Err(format!("an integer given for a {ty} column").into()),
            },
            Value::Text(v) => v.as_str().to_sql(ty, out),
            Value::Bytes(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => Value::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Value::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::BOOL => Value::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::BYTEA => Value::Bytes(Vec::<u8>::from_sql(ty, raw)?),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                Value::Text(String::from_sql(ty, raw)?)
            }
            _ => return Err(format!("a {ty} column, which the store does not use").into()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Value::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}
