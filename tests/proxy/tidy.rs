//! Tidy checks: lines of ARCHITECTURE.md that a reviewer would otherwise check by eye,
//! read from the sources (in the manner of rust-analyzer's `tests/tidy.rs`). Code in a
//! module's `#[cfg(test)] mod tests` and comment lines are not looked at.
//!
//! To let a new module do one of these things, add it to the list below with the reason,
//! and say so in ARCHITECTURE.md (the "Tidy" paragraph under Cross-cutting).

use std::fs;
use std::path::Path;

/// Modules that may call `ApiKey::expose()`, each with the reason. Everywhere else a key
/// stays masked.
const MAY_EXPOSE_KEYS: &[(&str, &str)] = &[
    ("keys/key.rs", "defines it"),
    (
        "outbound/upstream.rs",
        "puts the key on the wire to the upstream",
    ),
    (
        "front/commands.rs",
        "`keys add` writes the key to the file, `keys remove|enable|disable` match a prefix, `keys check` sends it",
    ),
    ("persist/state.rs", "fingerprints it for the state file"),
];

/// Modules that may write, create, rename or remove files. Everything else only reads.
const MAY_WRITE_FILES: &[(&str, &str)] = &[
    ("keys/store.rs", "the keys file: locked, atomic replaces"),
    (
        "persist/state.rs",
        "the state file, through store's atomic write",
    ),
    (
        "keys/owner_only.rs",
        "creates store's files with an owner-only DACL (Windows)",
    ),
];

/// What writes to the file system.
const FILE_WRITES: &[&str] = &[
    "fs::write",
    "File::create",
    "OpenOptions",
    "fs::rename",
    "remove_file",
    "remove_dir",
    "create_dir",
    "DirBuilder",
    "fs::copy",
    "set_permissions",
    "fs::hard_link",
    "CreateFileW",
];

/// What reads a clock.
const CLOCK_READS: &[&str] = &["Instant::now", "SystemTime::now"];

fn src() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
}

/// Every `.rs` file under `src/`: (path from `src/` with `/`, lines outside comments and
/// the unit-test module).
fn sources() -> Vec<(String, Vec<(usize, String)>)> {
    let mut files = Vec::new();
    let mut folders = vec![src().to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let name = path.strip_prefix(src()).unwrap();
                let name = name.to_string_lossy().replace('\\', "/");
                files.push((name, code_lines(&fs::read_to_string(&path).unwrap())));
            }
        }
    }
    files.sort();
    assert!(files.len() > 10, "found only {} files in src/", files.len());
    files
}

/// Numbered lines that are code: not comments, and not in a `#[cfg(test)] mod`.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            // The test module ends at its closing brace, the first `}` in column 0
            // (rustfmt puts it there, and nothing inside it).
            while i < lines.len() && lines[i] != "}" {
                i += 1;
            }
            i += 1;
            continue;
        }
        if !line.starts_with("//") {
            out.push((i + 1, lines[i].to_string()));
        }
        i += 1;
    }
    out
}

/// The modules ARCHITECTURE.md's code map marks **Pure**.
fn pure_modules() -> Vec<String> {
    let map = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md")).unwrap();
    let mut pure = Vec::new();
    let mut current: Option<String> = None;
    for line in map.lines() {
        if let Some(rest) = line.strip_prefix("- `") {
            current = rest
                .split('`')
                .next()
                .filter(|name| name.ends_with(".rs"))
                .map(String::from);
        } else if !line.starts_with("  ") {
            current = None;
        }
        if let Some(name) = &current
            && line.contains("**Pure")
            && !pure.contains(name)
        {
            pure.push(name.clone());
        }
    }
    pure
}

/// `file:line: text` for each code line of the files `check` picks that contains one of
/// `needles`.
fn offences(needles: &[&str], check: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for (name, lines) in sources() {
        if !check(&name) {
            continue;
        }
        for (n, line) in lines {
            if needles.iter().any(|needle| line.contains(needle)) {
                found.push(format!("src/{name}:{n}: {}", line.trim()));
            }
        }
    }
    found
}

fn listed(list: &[(&str, &str)], name: &str) -> bool {
    list.iter().any(|(listed, _)| *listed == name)
}

#[test]
fn keys_are_exposed_only_in_the_listed_modules() {
    let found = offences(&[".expose()"], |name| !listed(MAY_EXPOSE_KEYS, name));
    assert!(
        found.is_empty(),
        "a raw key is taken out of ApiKey outside the modules allowed to (tests/proxy/tidy.rs, MAY_EXPOSE_KEYS):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_pure_modules_read_no_clock() {
    let pure = pure_modules();
    for expected in [
        "rotation/policy.rs",
        "rotation/classify.rs",
        "serve/route.rs",
        "serve/http1.rs",
        "serve/access.rs",
    ] {
        assert!(
            pure.iter().any(|p| p == expected),
            "ARCHITECTURE.md no longer marks {expected} **Pure** (found: {pure:?})"
        );
    }
    let found = offences(CLOCK_READS, |name| pure.iter().any(|p| p == name));
    assert!(
        found.is_empty(),
        "a module ARCHITECTURE.md marks **Pure** reads the clock; pass `now` in instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn only_the_listed_modules_write_files() {
    let found = offences(FILE_WRITES, |name| !listed(MAY_WRITE_FILES, name));
    assert!(
        found.is_empty(),
        "a file is written outside the modules allowed to (tests/proxy/tidy.rs, MAY_WRITE_FILES):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_lists_name_modules_that_exist() {
    let names: Vec<String> = sources().into_iter().map(|(name, _)| name).collect();
    for (name, _) in MAY_EXPOSE_KEYS.iter().chain(MAY_WRITE_FILES) {
        assert!(names.iter().any(|n| n == name), "no src/{name}");
    }
    for name in pure_modules() {
        assert!(
            names.contains(&name),
            "ARCHITECTURE.md marks a missing src/{name} pure"
        );
    }
}

#[test]
fn the_test_module_and_comments_are_left_out_but_code_is_not() {
    let text = "fn a() { x.expose(); }\n// y.expose()\n#[cfg(test)]\nmod tests {\n    fn b() {\n        z.expose();\n    }\n}\nfn c() { w.expose(); }\n";
    let lines: Vec<usize> = code_lines(text).into_iter().map(|(n, _)| n).collect();
    assert_eq!(lines, [1, 9]);
}
