//! Durable coverage rules: `DATA_DIR/rules.json`.
//!
//! Rules are registered by people, a few per crisis, so they live in one
//! small JSON file rewritten whole on every change (written to a temporary
//! file, synced, renamed, directory synced) rather than in the feature
//! journal. A rule is acknowledged (`201`) only after the file holding it is
//! on disk, and comes back with the same id after a restart.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::Error;

/// The file's name under the data directory.
pub const FILE: &str = "rules.json";

/// `DATA_DIR/rules.json`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// What `rules.json` holds.
#[derive(Debug, Default)]
pub struct Stored {
    /// `(id, rule body)`, in the form `POST /joins/rules` accepts.
    pub rules: Vec<(u64, Value)>,
    /// The id the next new rule gets: ids of deleted rules are not reused.
    pub next_id: u64,
}

/// The stored rules; none when the file does not exist.
pub fn load(data_dir: &Path) -> Result<Stored, Error> {
    let path = path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::default()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let corrupt = |why: &str| Error::Io {
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned()),
    };
    let doc: Value = serde_json::from_str(&text).map_err(|e| corrupt(&e.to_string()))?;
    let rules = doc
        .get("rules")
        .and_then(Value::as_array)
        .ok_or_else(|| corrupt("no 'rules' array"))?;
    let rules = rules
        .iter()
        .map(|entry| {
            let id = entry
                .get("id")
                .and_then(Value::as_u64)
                .ok_or_else(|| corrupt("a rule without a numeric 'id'"))?;
            Ok((id, entry.clone()))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let next_id = doc.get("next_id").and_then(Value::as_u64).unwrap_or(0);
    Ok(Stored { rules, next_id })
}

/// Replaces the stored rules with `rules` (`(id, rule body)`), durably.
pub fn save(data_dir: &Path, rules: &[(u64, Value)], next_id: u64) -> Result<(), Error> {
    let path = path(data_dir);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let entries: Vec<Value> = rules
        .iter()
        .map(|(id, body)| {
            let mut entry = body.clone();
            if let Some(object) = entry.as_object_mut() {
                object.insert("id".to_owned(), json!(id));
            }
            entry
        })
        .collect();
    let text = serde_json::to_string_pretty(&json!({ "next_id": next_id, "rules": entries }))
        .map_err(|e| Error::io(&tmp, std::io::Error::other(e)))?;
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    // The rename itself must survive a crash too.
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::io(data_dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_and_a_missing_file_is_none() {
        let dir = std::env::temp_dir().join(format!("beeld-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let _ = std::fs::remove_file(path(&dir));
        assert!(load(&dir).expect("load").rules.is_empty());
        let rules = vec![
            (
                3,
                json!({"target": {"region": "VR24"}, "type": "ambulance", "min_units": 2}),
            ),
            (7, json!({"target": {"hazard": "h1", "radius_km": 10.0}})),
        ];
        save(&dir, &rules, 9).expect("save");
        let stored = load(&dir).expect("load");
        assert_eq!(stored.next_id, 9);
        let back = stored.rules;
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].0, 3);
        assert_eq!(back[1].1["target"]["hazard"], "h1");
        std::fs::write(path(&dir), "{").expect("write");
        assert!(
            load(&dir).is_err(),
            "a damaged file is an error, not no rules"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
