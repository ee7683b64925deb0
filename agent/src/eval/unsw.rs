//! UNSW-NB15 in dataset mode: the CSV's own columns as the features (schema `unsw-nb15`).
//!
//! Numeric columns are used as `log1p`; `proto`, `service` and `state` become one-hot columns
//! for the values seen in the training rows (anything else sets `<column>=other`). `id`,
//! `label` and `attack_cat` are never features. `sttl`, `dttl` and `ct_state_ttl` are known to
//! leak the label and can be left out.

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
};

use ndarray::Array2;

use crate::features::{FeatureSpec, Schema, Transform};

/// The columns that separate the classes almost by themselves.
pub const LEAK_COLUMNS: [&str; 3] = ["sttl", "dttl", "ct_state_ttl"];
const CATEGORICAL: [&str; 3] = ["proto", "service", "state"];
const NOT_FEATURES: [&str; 3] = ["id", "label", "attack_cat"];
/// A category needs this many training rows to get its own column.
const MIN_CATEGORY_ROWS: usize = 20;

/// The parsed CSV.
#[derive(Debug)]
pub struct UnswData {
    pub numeric_names: Vec<String>,
    /// `[row][numeric column]`.
    pub numeric: Vec<Vec<f32>>,
    /// `[row][proto, service, state]`.
    pub categorical: Vec<[String; 3]>,
    pub attack: Vec<bool>,
    /// `attack_cat` (`Normal` for normal rows).
    pub kind: Vec<String>,
}

/// Why the dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UnswError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: column `{column}` is missing")]
    Column { path: PathBuf, column: &'static str },
    #[error("{path}:{line}: column `{column}`: `{value}` is not a number")]
    Number { path: PathBuf, line: usize, column: String, value: String },
}

impl UnswData {
    /// Reads the CSV, or the first `.csv` inside a `.zip`.
    ///
    /// # Errors
    /// [`UnswError`] naming the file, line and column.
    pub fn read(path: &Path) -> Result<Self, UnswError> {
        let read_err = |message: String| UnswError::Read { path: path.to_owned(), message };
        let mut text = Vec::new();
        let mut file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip")) {
            let mut zip = zip::ZipArchive::new(file).map_err(|e| read_err(e.to_string()))?;
            let name = zip
                .file_names()
                .find(|n| std::path::Path::new(n).extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")))
                .map(str::to_owned)
                .ok_or_else(|| read_err("the archive has no .csv file".into()))?;
            zip.by_name(&name)
                .map_err(|e| read_err(e.to_string()))?
                .read_to_end(&mut text)
                .map_err(|e| read_err(e.to_string()))?;
        } else {
            file.read_to_end(&mut text).map_err(|e| read_err(e.to_string()))?;
        }
        let text = text.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&text);
        Self::parse(path, text)
    }

    fn parse(path: &Path, text: &[u8]) -> Result<Self, UnswError> {
        let mut reader = csv::ReaderBuilder::new().from_reader(text);
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| UnswError::Read { path: path.to_owned(), message: e.to_string() })?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        let find = |column: &'static str| {
            headers.iter().position(|h| h == column).ok_or(UnswError::Column { path: path.to_owned(), column })
        };
        let label_at = find("label")?;
        let kind_at = find("attack_cat")?;
        let cat_at = [find(CATEGORICAL[0])?, find(CATEGORICAL[1])?, find(CATEGORICAL[2])?];
        let numeric_at: Vec<usize> = (0..headers.len())
            .filter(|i| !NOT_FEATURES.contains(&headers[*i].as_str()) && !CATEGORICAL.contains(&headers[*i].as_str()))
            .collect();
        let mut data = Self {
            numeric_names: numeric_at.iter().map(|&i| headers[i].clone()).collect(),
            numeric: Vec::new(),
            categorical: Vec::new(),
            attack: Vec::new(),
            kind: Vec::new(),
        };
        for (n, row) in reader.records().enumerate() {
            let line = n + 2;
            let row = row.map_err(|e| UnswError::Read { path: path.to_owned(), message: e.to_string() })?;
            let number = |i: usize| {
                let v = row.get(i).unwrap_or("").trim();
                v.parse::<f32>().map_err(|_| UnswError::Number {
                    path: path.to_owned(),
                    line,
                    column: headers[i].clone(),
                    value: v.to_owned(),
                })
            };
            data.numeric.push(numeric_at.iter().map(|&i| number(i)).collect::<Result<_, _>>()?);
            data.categorical.push(cat_at.map(|i| row.get(i).unwrap_or("").trim().to_owned()));
            data.attack.push(number(label_at)? > 0.5);
            let kind = row.get(kind_at).unwrap_or("").trim();
            data.kind.push(if kind.is_empty() { "Normal".to_owned() } else { kind.to_owned() });
        }
        Ok(data)
    }

    /// Number of rows.
    #[must_use]
    pub fn len(&self) -> usize {
        self.attack.len()
    }

    /// True if there are no rows.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.attack.is_empty()
    }
}

/// The dataset-mode schema and how to build its rows.
#[derive(Debug)]
pub struct UnswSchema {
    pub schema: Schema,
    numeric: Vec<usize>,
    /// Per categorical column: value → one-hot column offset (in order), then `other`.
    categories: Vec<BTreeMap<String, usize>>,
}

impl UnswSchema {
    /// Builds the schema from the training rows: which numeric columns (leaks dropped if
    /// asked) and which category values get a column.
    #[must_use]
    pub fn fit(data: &UnswData, train: &[usize], with_leaks: bool) -> Self {
        let numeric: Vec<usize> = (0..data.numeric_names.len())
            .filter(|&i| with_leaks || !LEAK_COLUMNS.contains(&data.numeric_names[i].as_str()))
            .collect();
        let mut features: Vec<FeatureSpec> = numeric
            .iter()
            .map(|&i| FeatureSpec {
                name: data.numeric_names[i].clone(),
                unit: "as in the dataset".into(),
                transform: Transform::Log1p,
                description: "UNSW-NB15 column".into(),
            })
            .collect();
        let mut categories = Vec::new();
        for (c, column) in CATEGORICAL.iter().enumerate() {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for &r in train {
                *counts.entry(data.categorical[r][c].as_str()).or_default() += 1;
            }
            let mut map = BTreeMap::new();
            for (value, n) in counts {
                if n >= MIN_CATEGORY_ROWS {
                    map.insert(value.to_owned(), map.len());
                    features.push(one_hot(column, value));
                }
            }
            features.push(one_hot(column, "other"));
            categories.push(map);
        }
        let id = if with_leaks { "unsw-nb15" } else { "unsw-nb15-no-ttl" };
        Self { schema: Schema { id: id.into(), features }, numeric, categories }
    }

    /// Raw rows (before transform) for the given row indices.
    #[must_use]
    pub fn rows(&self, data: &UnswData, which: &[usize]) -> Array2<f32> {
        let mut out = Array2::zeros((which.len(), self.schema.len()));
        for (o, &r) in which.iter().enumerate() {
            let mut col = 0;
            for &i in &self.numeric {
                out[[o, col]] = data.numeric[r][i];
                col += 1;
            }
            for (c, map) in self.categories.iter().enumerate() {
                let offset = map.get(&data.categorical[r][c]).copied().unwrap_or(map.len());
                out[[o, col + offset]] = 1.0;
                col += map.len() + 1;
            }
        }
        out
    }
}

fn one_hot(column: &str, value: &str) -> FeatureSpec {
    let value = if value.is_empty() || value == "-" { "none" } else { value };
    FeatureSpec {
        name: format!("{column}={value}"),
        unit: "flag".into(),
        transform: Transform::Identity,
        description: format!("`{column}` is {value}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "\u{feff}id,dur,proto,service,state,sttl,dttl,ct_state_ttl,attack_cat,label\n\
        1,0.5,tcp,-,FIN,31,29,0,Normal,0\n\
        2,1.5,udp,dns,CON,254,252,2,Generic,1\n";

    #[test]
    fn parses_columns_and_builds_one_hot_rows() {
        let text = CSV.as_bytes().strip_prefix("\u{feff}".as_bytes()).expect("bom");
        let data = UnswData::parse(Path::new("t.csv"), text).expect("parses");
        assert_eq!(data.numeric_names, ["dur", "sttl", "dttl", "ct_state_ttl"]);
        assert_eq!(data.attack, [false, true]);
        assert_eq!(data.kind, ["Normal", "Generic"]);
        // Too few rows for any category to get a column: only the `other` columns.
        let s = UnswSchema::fit(&data, &[0], false);
        let names: Vec<&str> = s.schema.names().collect();
        assert_eq!(names, ["dur", "proto=other", "service=other", "state=other"]);
        let rows = s.rows(&data, &[1]);
        assert_eq!(rows.row(0).to_vec(), [1.5, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn bad_number_names_line_and_column() {
        let text = "id,dur,proto,service,state,attack_cat,label\n1,abc,tcp,-,FIN,Normal,0\n";
        let e = UnswData::parse(Path::new("t.csv"), text.as_bytes()).expect_err("bad number");
        assert_eq!(e.to_string(), "t.csv:2: column `dur`: `abc` is not a number");
    }
}
