//! Filtered listings whose placeholders and binds cannot drift apart: each condition is written
//! together with its value, in one call that numbers the `$n` and records the bind.
//!
//! ```
//! use opsconductor_storage::Select;
//! let mut q = Select::new("SELECT id FROM targets t WHERE 1 = 1");
//! q.and("t.os = {}", 2_i64).and_in("t.name IN ({})", ["web-1", "web-2"]);
//! q.push(" ORDER BY t.id").limit(51);
//! assert_eq!(
//!     q.sql(),
//!     "SELECT id FROM targets t WHERE 1 = 1 AND t.os = $1 AND t.name IN ($2, $3) ORDER BY t.id LIMIT $4"
//! );
//! ```

use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, FromRow};

/// A value bound to a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
}

impl From<&str> for Arg {
    fn from(value: &str) -> Arg {
        Arg::Text(value.to_string())
    }
}

impl From<String> for Arg {
    fn from(value: String) -> Arg {
        Arg::Text(value)
    }
}

impl From<&String> for Arg {
    fn from(value: &String) -> Arg {
        Arg::Text(value.clone())
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Arg {
        Arg::Int(value)
    }
}

impl From<i32> for Arg {
    fn from(value: i32) -> Arg {
        Arg::Int(i64::from(value))
    }
}

/// A SELECT under construction.
#[derive(Debug, Clone)]
pub struct Select {
    sql: String,
    args: Vec<Arg>,
}

impl Select {
    /// Starts from a statement that conditions are appended to with ` AND ...` (so it ends
    /// in a `WHERE` clause, `WHERE 1 = 1` if nothing else).
    pub fn new(base: impl Into<String>) -> Select {
        Select {
            sql: base.into(),
            args: Vec::new(),
        }
    }

    fn placeholder(&mut self, value: Arg) -> String {
        self.args.push(value);
        format!("${}", self.args.len())
    }

    /// ` AND condition`, its `{}` standing for `value`.
    pub fn and(&mut self, condition: &str, value: impl Into<Arg>) -> &mut Select {
        let placeholder = self.placeholder(value.into());
        self.sql += " AND ";
        self.sql += &condition.replacen("{}", &placeholder, 1);
        self
    }

    /// ` AND condition`, its `{}` standing for the list of `values` (`$3, $4, $5`). SQL has
    /// no empty list: skip the condition when there are no values.
    pub fn and_in<V: Into<Arg>>(
        &mut self,
        condition: &str,
        values: impl IntoIterator<Item = V>,
    ) -> &mut Select {
        let list: Vec<String> = values
            .into_iter()
            .map(|v| self.placeholder(v.into()))
            .collect();
        self.sql += " AND ";
        self.sql += &condition.replacen("{}", &list.join(", "), 1);
        self
    }

    /// Appends SQL that binds nothing (` AND disabled = 0`, ` ORDER BY id`).
    pub fn push(&mut self, sql: &str) -> &mut Select {
        self.sql += sql;
        self
    }

    /// ` LIMIT $n`.
    pub fn limit(&mut self, rows: i64) -> &mut Select {
        let placeholder = self.placeholder(Arg::Int(rows));
        self.sql += " LIMIT ";
        self.sql += &placeholder;
        self
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    pub fn args(&self) -> &[Arg] {
        &self.args
    }

    fn query<T>(&self) -> sqlx::query::QueryAs<'_, Any, T, sqlx::any::AnyArguments<'_>>
    where
        T: for<'r> FromRow<'r, AnyRow>,
    {
        let mut query = sqlx::query_as::<Any, T>(&self.sql);
        for arg in &self.args {
            query = match arg {
                Arg::Text(text) => query.bind(text.clone()),
                Arg::Int(n) => query.bind(*n),
            };
        }
        query
    }

    /// Runs it, every value bound in order.
    pub async fn fetch_all<T>(&self, pool: &AnyPool) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
    {
        self.query().fetch_all(pool).await
    }

    /// Runs it on `connection` (inside a transaction).
    pub async fn fetch_all_on<T>(
        &self,
        connection: &mut sqlx::AnyConnection,
    ) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
    {
        self.query().fetch_all(connection).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_binds() {
        let mut q = Select::new("SELECT 1 FROM t WHERE 1 = 1");
        q.and("a = {}", "x").push(" AND b = 0").and("c > {}", 5_i64);
        q.limit(10);
        assert_eq!(
            q.sql(),
            "SELECT 1 FROM t WHERE 1 = 1 AND a = $1 AND b = 0 AND c > $2 LIMIT $3"
        );
        assert_eq!(q.args(), [Arg::Text("x".into()), Arg::Int(5), Arg::Int(10)]);
    }
}
