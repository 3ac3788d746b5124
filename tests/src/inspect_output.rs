//! Reading the tables `lb-agent inspect` prints.

/// The rows (cells split at whitespace) of the table titled `title`: the lines after its
/// title and column header, up to the next blank line.
pub fn table_rows(inspect: &str, title: &str) -> Vec<Vec<String>> {
    inspect
        .lines()
        .skip_while(|line| line.trim() != title)
        .skip(2)
        .take_while(|line| !line.trim().is_empty())
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The node-wide counter `name` from the `COUNTERS` table, if listed.
pub fn counter(inspect: &str, name: &str) -> Option<u64> {
    table_rows(inspect, "COUNTERS")
        .iter()
        .find(|row| row[0] == name)
        .and_then(|row| row.get(1)?.parse().ok())
}
