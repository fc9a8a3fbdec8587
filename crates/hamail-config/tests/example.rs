//! The example config documents every key with its default value: it must
//! parse, and equal the embedded defaults.

use hamail_config::Config;

#[test]
fn example_config_parses_and_equals_defaults() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/hamail.example.toml"
    );
    let cfg = Config::load(std::path::Path::new(path)).expect("example config parses");
    assert_eq!(cfg, Config::default());
}

#[test]
fn example_config_names_every_key() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/hamail.example.toml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let defaults = toml::to_string(&Config::default()).unwrap();
    let table: toml::Table = defaults.parse().unwrap();
    for (section, keys) in &table {
        assert!(
            text.contains(&format!("[{section}]")),
            "section [{section}] missing"
        );
        for (key, value) in keys.as_table().unwrap() {
            // A sub-table ([smtp.reinject]) may be documented as a table
            // of its own.
            if value.is_table() && text.contains(&format!("[{section}.{key}]")) {
                continue;
            }
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{key} ="))),
                "key {section}.{key} not documented in the example"
            );
        }
    }
}

#[test]
fn deployment_examples_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../cluster");
    let mut n = 0;
    for path in [
        format!("{dir}/single-node.toml"),
        format!("{dir}/local-3node/node1.toml"),
        format!("{dir}/local-3node/node2.toml"),
        format!("{dir}/local-3node/node3.toml"),
    ] {
        Config::load(std::path::Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
        n += 1;
    }
    assert_eq!(n, 4);
}
