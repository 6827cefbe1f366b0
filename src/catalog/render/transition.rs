//! The queries a statement trigger reads the rows it changed with: its transition
//! tables, as (new, old) pairs in the order the statement changed them, filtered by the
//! trigger's WHEN condition.

use super::Rows;
use crate::mapping::Mapping;

/// The new and old rows as the queries of [`rows_inserted`] and [`rows_updated`] name
/// them, for their WHERE clause.
pub(super) const PAIRED_ROWS: Rows<'static> = Rows {
    new: "(n.r)",
    old: "(o.r)",
};

/// The alias whose bare name in the queries below is a whole row: a name no IT table's
/// column has (a column of that name would be read instead).
const ROW: &str = "itrelay_row";

/// The rows an INSERT statement inserted into `reference`'s table that meet `when`, as
/// (new, old) pairs in the order it inserted them. The old row has the new row's columns,
/// all NULL: so `OLD` is NULL, as in a row trigger, and a body's `OLD.<column>` can still
/// be planned.
pub(super) fn rows_inserted(mapping: &Mapping, reference: &str, when: Option<&str>) -> String {
    let rows = mapping.transition_rows_sql(reference, "new_rows");
    format!(
        "SELECT n.r AS new, o.r AS old\n            \
         FROM (SELECT {ROW}, row_number() OVER () FROM {rows} AS {ROW}) AS n (r, i)\n            \
         CROSS JOIN (SELECT {ROW} FROM (SELECT o.* FROM (SELECT) AS one LEFT JOIN {rows} AS o ON false)\n                \
         AS {ROW}) AS o (r)\n            \
         {}ORDER BY i",
        where_clause(when)
    )
}

/// The rows an UPDATE statement updated in `reference`'s table that meet `when`, as
/// (new, old) pairs in the order it updated them: the two transition tables hold one row
/// per updated row each, in that order, so they pair by position (a key could itself have
/// been updated).
pub(super) fn rows_updated(mapping: &Mapping, reference: &str, when: Option<&str>) -> String {
    format!(
        "SELECT n.r AS new, o.r AS old\n            \
         FROM (SELECT {ROW}, row_number() OVER () FROM {} AS {ROW}) AS n (r, i)\n            \
         JOIN (SELECT {ROW}, row_number() OVER () FROM {} AS {ROW}) AS o (r, i) USING (i)\n            \
         {}ORDER BY i",
        mapping.transition_rows_sql(reference, "new_rows"),
        mapping.transition_rows_sql(reference, "old_rows"),
        where_clause(when)
    )
}

/// `WHERE <when>` and a line break, or nothing.
fn where_clause(when: Option<&str>) -> String {
    when.map(|when| format!("WHERE {when}\n            "))
        .unwrap_or_default()
}
